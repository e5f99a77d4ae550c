import inspect

import pytest
import torch

from sae_helpers import architectures, create_sae
from sae_helpers.saes.registry import get_sae_class


def test_known_architectures():
    assert {"relu", "gated", "jumprelu"} <= set(architectures())


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError, match="Unknown SAE architecture 'topkk'.*gated"):
        create_sae("topkk", 4, 8)


@pytest.mark.parametrize("width", [0, -3, 2.5, True])
def test_non_positive_width_is_refused(width):
    with pytest.raises(ValueError, match="d_sae must be a positive integer"):
        create_sae("relu", 4, width)


def test_metadata_that_is_not_a_dict_is_refused():
    with pytest.raises(ValueError, match="metadata must be a dict .*got list \\['gpt2'\\]"):
        create_sae("relu", 4, 8, metadata=["gpt2"])
    from sae_helpers import train_sae

    with pytest.raises(ValueError, match="metadata must be a dict"):
        train_sae(torch.randn(300, 4), "relu", 8, 1.0, 2, batch_size=64, init_sample_size=100, progress=False,
                  metadata=["gpt2"])


def test_width_mismatch_is_a_clear_error():
    sae = create_sae("gated", 6, 12).init_weights()
    with pytest.raises(ValueError, match="expects inputs of width d_in=6.*shape \\(3, 5\\)"):
        sae.encode(torch.randn(3, 5))


def test_select_latents_slices_every_per_latent_parameter():
    sae = create_sae("gated", 5, 9).init_weights()
    parts = sae.select_latents([2, 7])
    assert set(parts) == {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec"}
    torch.testing.assert_close(parts["W_enc"], sae.W_enc[:, [2, 7]].detach())
    torch.testing.assert_close(parts["W_dec"], sae.W_dec[[2, 7]].detach())


@pytest.mark.parametrize("arch", ["relu", "gated", "topk", "batchtopk", "jumprelu"])
def test_training_starts_with_unit_decoder_rows_and_the_encoder_as_their_transpose(arch):
    """Gao et al.'s initialisation, for every architecture the trainer builds."""
    from sae_helpers.training.config import TrainConfig
    from sae_helpers.training.run import TrainingRun

    sparsity = {"relu": {"l1_coefficient": 1.0}, "gated": {"l1_coefficient": 1.0}, "topk": {"k": 4},
                "batchtopk": {"k": 4}, "jumprelu": {"l0_coefficient": 1.0}}[arch]
    cfg = TrainConfig(arch=arch, width=24, steps=10, batch_size=8, normalize_activations=False, **sparsity)
    sae = TrainingRun.start(cfg, torch.randn(64, 7, generator=torch.Generator().manual_seed(0)),
                            torch.device("cpu")).sae
    norms = sae.W_dec.detach().double().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(24, dtype=torch.float64))
    assert torch.equal(sae.W_enc.detach(), sae.W_dec.detach().T)
    assert torch.unique(sae.W_dec.detach(), dim=0).shape[0] == 24  # distinct random rows


@pytest.mark.parametrize("name", sorted(architectures()))
def test_the_declared_training_options_are_the_training_modules_keywords(name):
    """``training_options`` names exactly the keyword-only options of the training module's constructors
    (beyond the base SAE's dtype, device and metadata), and each one is accepted there."""
    cls = get_sae_class(name)
    probe = cls.for_training(4, 8, **({"k": 2} if "k" in cls.hyperparameters else {}))
    keywords = {p.name for klass in type(probe).__mro__ if "__init__" in vars(klass)
                for p in inspect.signature(vars(klass)["__init__"]).parameters.values() if p.kind is p.KEYWORD_ONLY}
    keywords -= {"dtype", "device", "metadata"}
    assert keywords == set(cls.training_options), name
    for option, kind in cls.training_options.items():
        value = 2 if kind is int else 0.25
        assert getattr(cls.for_training(4, 8, **({"k": 2} if "k" in cls.hyperparameters else {}), **{option: value}),
                       option) == value
