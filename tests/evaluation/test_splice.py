import math

import pytest
import torch

import sae_helpers
from sae_helpers.evaluation import check_sae_fits, splice_losses
from sae_helpers.models import activations_at

SITE = "blocks.0.hook_resid_post"


def identity_sae(d, model_name, hook_name=SITE):
    """A ReLU SAE with W_enc = [I, -I], W_dec = [I; -I] and zero biases: x_hat == x exactly."""
    sae = sae_helpers.create_sae("relu", d, 2 * d, metadata={"model_name": model_name, "hook_name": hook_name})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def random_sae(model, hook_name=SITE, seed=0):
    d = activations_at(model, torch.tensor([[1]]), hook_name).shape[-1]
    sae = sae_helpers.create_sae("relu", d, 3 * d, metadata={"model_name": model.model_name, "hook_name": hook_name})
    return sae.init_weights(torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("hook_name", [SITE, "blocks.0.attn.hook_z", "blocks.1.mlp.hook_post"])
def test_identity_sae_splice_is_exact(model, tokens, hook_name):
    d = activations_at(model, tokens[:1], hook_name).shape[-1]
    [result] = splice_losses(model, identity_sae(d, model.model_name, hook_name), tokens, batch_size=3, progress=False)
    assert result["ce_sae"] == result["ce_clean"]
    assert result["kl"] == 0.0
    assert result["delta_lm_loss"] == 0.0
    assert result["loss_recovered"] == 1.0
    assert result["fvu"] == 0.0 and result["mse"] == 0.0
    assert result["l0"] == d  # one of relu(x_i), relu(-x_i) is active per dimension
    assert result["ce_zero_ablation"] != result["ce_clean"]


@pytest.mark.parametrize("hook_name", [SITE, "blocks.0.attn.hook_z"])
def test_zero_reconstruction_equals_zero_ablation(model, tokens, hook_name):
    d = activations_at(model, tokens[:1], hook_name).shape[-1]
    sae = identity_sae(d, model.model_name, hook_name)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    [result] = splice_losses(model, sae, tokens, batch_size=4, progress=False)
    assert result["ce_sae"] == result["ce_zero_ablation"]
    assert result["loss_recovered"] == 0.0
    assert result["kl"] > 0


def _reference(model, sae, tokens, first):
    """The losses computed directly: one batch, float64, no helpers."""

    def run(replace):
        def hook(activation, hook):
            if replace is None:
                return None
            out = activation.clone()
            out[:, first:] = replace(activation[:, first:])
            return out

        with torch.no_grad():
            return model.run_with_hooks(tokens, fwd_hooks=[(SITE, hook)]).double().log_softmax(-1)[:, first:-1]

    def reconstruct(x):
        return sae.decode(sae.encode(x))

    targets = tokens[:, first + 1 :].unsqueeze(-1)
    clean, spliced, zero = run(None), run(reconstruct), run(torch.zeros_like)
    ce = {name: -lp.gather(-1, targets).mean().item() for name, lp in
          (("ce_clean", clean), ("ce_sae", spliced), ("ce_zero_ablation", zero))}
    ce["kl"] = (clean.exp() * (clean - spliced)).sum(-1).mean().item()
    return ce


@pytest.mark.parametrize("exclude_first", [True, False])
def test_losses_match_a_direct_computation(model, tokens, exclude_first):
    sae = random_sae(model)
    first = 1 if exclude_first else 0
    expected = _reference(model, sae, tokens, first)
    [result] = splice_losses(model, sae, tokens, exclude_first=exclude_first, batch_size=3, progress=False)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    zero, clean, spliced = result["ce_zero_ablation"], result["ce_clean"], result["ce_sae"]
    assert result["loss_recovered"] == pytest.approx((zero - spliced) / (zero - clean))
    assert result["delta_lm_loss"] == pytest.approx(spliced - clean)
    assert result["n_predictions"] == tokens.shape[0] * (tokens.shape[1] - 1 - first)
    assert result["n_tokens"] == tokens.shape[0] * (tokens.shape[1] - first)
    acts = activations_at(model, tokens, SITE)[:, first:].reshape(-1, sae.d_in)
    metrics = sae_helpers.evaluate(sae, acts)
    for key in ("l0", "mse", "fvu", "relative_reconstruction_bias", "dead_fraction"):
        assert result[key] == pytest.approx(metrics[key], rel=1e-6), key


def test_the_sae_sees_positions_from_1_by_default(model, tokens):
    sae = identity_sae(model.cfg.d_model, model.model_name)
    seen = []
    encode = sae.encode
    sae.encode = lambda x: seen.append(x) or encode(x)
    expected = activations_at(model, tokens, SITE)
    splice_losses(model, sae, tokens, batch_size=100, progress=False)
    assert torch.equal(seen[0], expected[:, 1:].reshape(-1, sae.d_in))
    splice_losses(model, sae, tokens, batch_size=100, exclude_first=False, progress=False)
    assert torch.equal(seen[1], expected.reshape(-1, sae.d_in))


def test_batch_size_and_iterable_input_do_not_change_the_result(model, tokens):
    # float32 forward passes of different batch shapes may differ in the last bits
    sae = random_sae(model, seed=2)
    [a] = splice_losses(model, sae, tokens, batch_size=10, progress=False)
    [b] = splice_losses(model, sae, tokens, batch_size=3, progress=False)
    [c] = splice_losses(model, sae, iter(list(tokens)), batch_size=4, progress=False)
    for key in ("ce_clean", "ce_sae", "ce_zero_ablation", "kl", "loss_recovered", "fvu", "l0"):
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
        assert c[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_hook_name_defaults_to_the_saes_metadata(model, tokens):
    sae = random_sae(model, hook_name="blocks.1.hook_mlp_out")
    assert check_sae_fits(model, sae) == "blocks.1.hook_mlp_out"


def test_mismatches_are_clear_errors(model, tokens):
    sae = identity_sae(16, model.model_name)
    with pytest.raises(ValueError, match="SAE/site mismatch.*trained at 'blocks.0.hook_resid_post'"):
        splice_losses(model, sae, tokens, hook_name="blocks.1.hook_resid_post", progress=False)
    [relaxed] = splice_losses(model, sae, tokens, hook_name="blocks.1.hook_resid_post", strict=False, progress=False)
    assert relaxed["kl"] == 0.0
    other = identity_sae(16, "smollm2-135m")
    with pytest.raises(ValueError, match="SAE/model mismatch.*'smollm2-135m'.*'tiny-llama-seed0'"):
        splice_losses(model, other, tokens, progress=False)
    with pytest.raises(ValueError, match="width mismatch.*d_in=16.*width 32"):
        splice_losses(model, identity_sae(16, model.model_name, "blocks.0.mlp.hook_post"), tokens, progress=False)
    with pytest.raises(ValueError, match="Unknown hook name"):
        splice_losses(model, identity_sae(16, model.model_name, "blocks.0.hook_resid"), tokens, progress=False)
    anonymous = sae_helpers.create_sae("relu", 16, 32)
    with pytest.raises(ValueError, match="no 'hook_name'"):
        splice_losses(model, anonymous, tokens, progress=False)
    with pytest.raises(ValueError, match="too short"):
        splice_losses(model, sae, tokens[:, :2], progress=False)
    assert not math.isnan(splice_losses(model, anonymous.init_weights(), tokens, hook_name=SITE,
                                        progress=False)[0]["ce_sae"])


def test_one_sae_gives_a_list_of_one(model, tokens):
    sae = random_sae(model, seed=1)
    one = splice_losses(model, sae, tokens, batch_size=3, progress=False)
    assert isinstance(one, list) and len(one) == 1
    assert one == splice_losses(model, [sae], tokens, batch_size=3, progress=False)


def test_a_list_of_saes_equals_splicing_each_alone(model, tokens):
    saes = [random_sae(model, seed=s) for s in (1, 2, 3)]
    together = splice_losses(model, saes, tokens, batch_size=3, progress=False)
    assert isinstance(together, list) and len(together) == 3
    for sae, result in zip(saes, together, strict=True):
        [alone] = splice_losses(model, sae, tokens, batch_size=3, progress=False)
        assert result.keys() == alone.keys()
        for key in alone:
            assert result[key] == pytest.approx(alone[key], rel=1e-12, abs=1e-12), key


def test_delta_lm_loss_standard_error_is_over_sequences(model, tokens):
    """The standard error equals the spread of each sequence's own delta LM loss, spliced one at a time."""
    sae = random_sae(model, seed=4)
    [together] = splice_losses(model, sae, tokens, batch_size=4, progress=False)
    per_sequence = torch.tensor([splice_losses(model, sae, tokens[i : i + 1], progress=False)[0]["delta_lm_loss"]
                                 for i in range(len(tokens))], dtype=torch.float64)
    # (float32 forward passes of other batch sizes: equal to about 1e-7)
    assert together["delta_lm_loss"] == pytest.approx(float(per_sequence.mean()), rel=1e-5)
    expected = float(per_sequence.std(unbiased=True)) / math.sqrt(len(tokens))
    assert together["delta_lm_loss_se"] == pytest.approx(expected, rel=1e-4)
    assert math.isnan(splice_losses(model, sae, tokens[:1], progress=False)[0]["delta_lm_loss_se"])


@pytest.mark.parametrize(("a", "b", "same"), [
    ("gpt2-small", "gpt2", True),  # SAELens's name for GPT-2 small, and TransformerLens's
    ("gpt2", "gpt2", True),
    ("gpt2-medium", "gpt2", False),
    ("smollm2-135m", "tiny-llama-seed0", False),  # names TransformerLens does not know: equal or not
    ("smollm2-135m", "smollm2-135m", True),
])
def test_model_names_match_through_transformer_lens_aliases(a, b, same):
    from sae_helpers.evaluation.splice import same_model

    assert same_model(a, b) is same and same_model(b, a) is same
