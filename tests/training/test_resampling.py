import torch

from sae_helpers import create_sae
from sae_helpers.training.resampling import resample_dead_latents


def test_dead_latents_are_pointed_at_badly_reconstructed_inputs():
    gen = torch.Generator().manual_seed(0)
    sae = create_sae("gated", 6, 10).init_weights(gen)
    x = torch.randn(64, 6, generator=gen)
    x[17] *= 50  # by far the worst reconstructed input: it gets (almost) all the probability
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    out = sae(x)
    (out.losses["reconstruction"] + out.losses["sparsity"] + out.losses["auxiliary"]).backward()
    opt.step()
    with torch.no_grad():
        sae.b_gate[[2, 5]] = 3.0
        sae.r_mag[[2, 5]] = 1.0
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[2, 5]] = True

    n = resample_dead_latents(sae, opt, dead, x, torch.Generator().manual_seed(1))

    assert n == 2
    direction = (x[17] - sae.b_dec) / (x[17] - sae.b_dec).norm()
    for j in (2, 5):
        torch.testing.assert_close(sae.W_dec[j], direction.detach())
        cos = torch.nn.functional.cosine_similarity(sae.W_enc[:, j], direction, dim=0)
        assert cos.item() > 0.9999
        assert sae.b_gate[j] == 0 and sae.r_mag[j] == 0 and sae.b_mag[j] == 0
        assert torch.count_nonzero(opt.state[sae.W_dec]["exp_avg_sq"][j]) == 0
        assert torch.count_nonzero(opt.state[sae.W_enc]["exp_avg"][:, j]) == 0
    alive = [j for j in range(10) if j not in (2, 5)]
    assert torch.equal(sae.W_dec[alive], before["W_dec"][alive])
    assert torch.count_nonzero(opt.state[sae.W_dec]["exp_avg_sq"][alive]) > 0
    live_norm = before["W_enc"][:, alive].norm(dim=0).mean()
    torch.testing.assert_close(sae.W_enc[:, 2].norm(), 0.2 * live_norm)


def test_nothing_dead_nothing_changes():
    sae = create_sae("relu", 4, 8).init_weights()
    before = sae.W_dec.detach().clone()
    opt = torch.optim.Adam(sae.parameters())
    assert resample_dead_latents(sae, opt, torch.zeros(8, dtype=torch.bool), torch.randn(5, 4),
                                 torch.Generator()) == 0
    assert torch.equal(sae.W_dec, before)


def test_training_resamples_from_a_pool_larger_than_the_batch():
    """At a resampling step the trainer draws inputs from ``pool`` (the training data), not only the batch:
    a badly reconstructed row that is only in the pool is where every dead latent is pointed."""
    from sae_helpers.training.config import TrainConfig
    from sae_helpers.training.run import TrainingRun

    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(32, 6, generator=gen)
    cfg = TrainConfig(arch="relu", width=10, steps=40, l1_coefficient=1.0, batch_size=32, resample_every=10,
                      dead_after=5, normalize_activations=False, b_dec_init="zeros", lr=1e-6)
    run = TrainingRun.start(cfg, batch, torch.device("cpu"))
    run.step_count = 10  # a resampling step
    run.steps_since_fired[[2, 5]] = 7
    outlier = torch.zeros(1, 6)
    outlier[0, 3] = 100.0  # far worse reconstructed than any batch row
    pool_rows = torch.cat([torch.randn(500, 6, generator=gen), outlier])
    asked = []

    def pool(n):
        asked.append(n)
        return pool_rows

    run.step(batch, pool)
    assert asked == [cfg.resample_pool_size] and run.n_resampled == 2
    for j in (2, 5):
        cos = torch.nn.functional.cosine_similarity(run.sae.W_dec[j], outlier[0], dim=0)
        assert cos.item() > 0.999
    run.steps_since_fired[[2, 5]] = 7
    run.step_count = 11  # not a resampling step: the pool is not asked for
    run.step(batch, pool)
    assert asked == [cfg.resample_pool_size]
