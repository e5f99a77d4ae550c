import torch

from sae_helpers.models import tiny_hf_model, tiny_model, wrap_hf_model


def test_tiny_model_builds_offline_and_records_its_name(no_network):
    model = tiny_model(seed=3)
    assert model.model_name == "tiny-llama-seed3"
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 16
    assert not model.training
    assert no_network == []


def test_tiny_model_is_deterministic_and_leaves_the_global_rng_alone():
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    state = torch.random.get_rng_state()
    a, b, c = tiny_model(seed=0), tiny_model(seed=0), tiny_model(seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
        assert not torch.allclose(a(ids), c(ids))


def test_bridge_logits_equal_the_hugging_face_models_exactly():
    ids = torch.tensor([[1, 5, 9, 12, 7, 3, 3, 40]])
    hf_model, tokenizer = tiny_hf_model(seed=0)
    with torch.no_grad():
        reference = hf_model(ids).logits  # before wrapping: the bridge edits hf_model in place
        model = wrap_hf_model(hf_model, tokenizer, boot_name="sae-helpers/tiny-llama", model_name="tiny")
        assert torch.equal(model(ids), reference)


def test_token_ids_run_as_given_but_strings_get_a_bos(model):
    bos = model.tokenizer.bos_token_id
    ids = torch.tensor([[5, 9, 12]])
    with torch.no_grad():
        assert model(ids).shape[1] == 3  # no BOS added to token ids
        text_tokens = model.to_tokens("the a of")
    assert text_tokens[0, 0].item() == bos and text_tokens.shape[1] == 4
    assert model.tokenizer("the a of")["input_ids"][0] == bos
    assert model.tokenizer("the a of", add_special_tokens=False)["input_ids"] == [3, 4, 5]
