import pytest
import torch

from sae_helpers.models import activations_at, check_hook_name, d_at, hook_names, layer_of
from sae_helpers.models.hooks import activations_at_sites

SITES = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_resid_post",
    "ln_final.hook_normalized",
]


@pytest.mark.parametrize("hook_name", SITES)
def test_early_stopped_activations_equal_a_full_forwards_cache(model, tokens, hook_name):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    expected = cache[hook_name].flatten(2)
    got = activations_at(model, tokens, hook_name)
    assert got.shape == (*tokens.shape, d_at(model, hook_name))
    assert torch.equal(got, expected)
    assert torch.equal(activations_at(model, tokens, hook_name, stop_early=False), expected)


def test_widths_and_head_flattening(model):
    cfg = model.cfg
    assert d_at(model, "blocks.0.hook_resid_post") == cfg.d_model
    assert d_at(model, "blocks.0.attn.hook_z") == cfg.n_heads * cfg.d_head
    assert d_at(model, "blocks.0.mlp.hook_post") == cfg.d_mlp


def test_the_forward_pass_really_stops_after_the_site(model, tokens):
    calls = []
    handle = model.blocks[1].register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        activations_at(model, tokens, "blocks.0.hook_resid_post")
        assert calls == []
        activations_at(model, tokens, "blocks.0.hook_resid_post", stop_early=False)
        assert calls == [1]
    finally:
        handle.remove()


def test_no_hook_is_left_behind_after_an_early_stop(model, tokens):
    with torch.no_grad():
        before = model(tokens)
        activations_at(model, tokens, "blocks.0.hook_mlp_out")
        after = model(tokens)
    assert torch.equal(before, after)
    assert all(not hook_point.fwd_hooks for hook_point in model.hook_dict.values())


def test_a_1d_token_tensor_is_one_sequence(model, tokens):
    assert torch.equal(activations_at(model, tokens[0], "blocks.0.hook_resid_post"),
                       activations_at(model, tokens[:1], "blocks.0.hook_resid_post"))


def test_wrong_hook_name_lists_similar_valid_names(model):
    with pytest.raises(ValueError, match=r"Unknown hook name 'blocks.0.hook_resid_pots'.*'blocks.0.hook_resid_post'"):
        check_hook_name(model, "blocks.0.hook_resid_pots")
    with pytest.raises(ValueError, match="2 blocks, numbered 0 to 1"):
        activations_at(model, torch.tensor([[1, 2]]), "blocks.6.hook_resid_post")
    with pytest.raises(ValueError, match="not give one activation vector per token"):
        check_hook_name(model, "blocks.0.attn.hook_pattern")
    assert "blocks.1.hook_resid_post" in hook_names(model)


def test_bad_tokens_are_clear_errors(model):
    with pytest.raises(TypeError, match="not strings"):
        activations_at(model, "the a of", "blocks.0.hook_resid_post")
    with pytest.raises(TypeError, match="integers"):
        activations_at(model, torch.zeros(1, 3), "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="another model's tokenizer"):
        activations_at(model, torch.tensor([[1, 10_000]]), "blocks.0.hook_resid_post")


def test_layer_of():
    assert layer_of("blocks.12.attn.hook_z") == 12
    assert layer_of("hook_embed") is None


def test_several_sites_from_one_forward_pass_equal_one_site_at_a_time(model, tokens):
    sites = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "hook_embed", "blocks.0.hook_mlp_out"]
    got = activations_at_sites(model, tokens, sites)
    assert list(got) == sites
    for site in sites:
        assert torch.equal(got[site], activations_at(model, tokens, site))
    assert list(activations_at_sites(model, tokens, [sites[1], sites[1]])) == [sites[1]]


def test_several_sites_stop_after_the_deepest_and_leave_no_hook(model, tokens):
    calls = []
    handle = model.blocks[1].register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        activations_at_sites(model, tokens, ["blocks.0.hook_resid_post", "blocks.0.attn.hook_z"])
        assert calls == []
        activations_at_sites(model, tokens, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"])
        assert calls == [1]
    finally:
        handle.remove()
    assert all(not hook_point.fwd_hooks for hook_point in model.hook_dict.values())


def test_several_sites_argument_errors(model, tokens):
    with pytest.raises(TypeError, match="use activations_at for one site"):
        activations_at_sites(model, tokens, "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="empty"):
        activations_at_sites(model, tokens, [])
    with pytest.raises(ValueError, match="Unknown hook name"):
        activations_at_sites(model, tokens, ["blocks.0.hook_resid_post", "blocks.5.hook_resid_post"])
