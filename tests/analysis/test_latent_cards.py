"""Feature inspection on a real (tiny) model and cache: densities, histograms, logit tokens, cards."""

import numpy as np
import pytest
import torch

from sae_helpers import create_sae, harvest, tiny_model
from sae_helpers.analysis import (
    decoder_logit_tokens,
    firing_density,
    latent_card_html,
    latent_cards,
    latent_statistics,
    logit_tokens,
    top_activating_contexts,
)
from sae_helpers.data.cache import CacheSource
from sae_helpers.models.tiny import tiny_hf_model
from tests.models.test_harvesting import tiny_corpus

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "cache"
    return harvest(model, SITE, 300, path, dataset=tiny_corpus(), context_size=16, batch_size=4, shard_tokens=64,
                   progress=False)


@pytest.fixture(scope="module")
def sae():
    sae = create_sae("relu", 16, 12, metadata={"hook_name": SITE})
    sae.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_enc.normal_(generator=torch.Generator().manual_seed(1))
        sae.b_enc.copy_(torch.linspace(-6.0, 1.0, 12))  # densities from ~0 to most tokens
        sae.b_enc[3] = -1e6  # never fires
    return sae


def _cache_rows(cache):
    source = CacheSource(cache)
    return torch.cat([source.shard_activations(i) for i in range(len(source.shards))])


def _all_latents(sae, cache):
    x = _cache_rows(cache).double()
    W_enc, b_enc, b_dec = (getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "b_dec"))
    return np.maximum(((x - b_dec) @ W_enc + b_enc).numpy(), 0.0)  # a ReLU SAE, by hand


def _sae_latents(sae, cache, batch_size):
    """The SAE's own activations as float64: ``sae.encode`` of the cache rows in the batches
    latent_statistics uses (per shard, ``batch_size`` rows at a time), so every value is
    bit-identical to the ones it counts."""
    source = CacheSource(cache)
    with torch.no_grad():
        return torch.cat([sae.encode(acts[start : start + batch_size].to(dtype=sae.dtype))
                          for acts in (source.shard_activations(i) for i in range(len(source.shards)))
                          for start in range(0, len(acts), batch_size)]).double().numpy()


def test_density_and_histograms_match_a_hand_computation(sae, cache):
    f = _all_latents(sae, cache)
    assert f.shape == (300, 12)
    density = firing_density(sae, cache, batch_size=37, progress=False)
    np.testing.assert_allclose(density, (f != 0).mean(0), atol=1e-12)
    assert density[3] == 0 and 0 < density.min(where=density > 0, initial=1) < density.max() <= 1

    # The SAE's own activations agree with the float64 hand computation to float32 rounding,
    # and fire on exactly the same tokens. The histograms are then checked against the SAE's
    # own values: a float64 recomputation can put a latent's largest activation a rounding
    # error above the last edge (the SAE's float32 maximum), where np.histogram drops it.
    g = _sae_latents(sae, cache, batch_size=37)
    scale = np.abs(f).max(0, keepdims=True) + 1.0
    np.testing.assert_allclose(g / scale, f / scale, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(g != 0, f != 0)

    latents = [11, 3, 7, 0]
    stats = latent_statistics(sae, cache, latents, bins=8, batch_size=37, progress=False)
    assert stats.latents == latents and stats.n_tokens == 300 and stats.histogram.shape == (4, 8)
    for i, j in enumerate(latents):
        values = g[g[:, j] != 0, j]
        assert stats.density[i] == pytest.approx(len(values) / 300)
        if not len(values):
            assert stats.histogram[i].sum() == 0 and stats.max_activation[i] == 0
            continue
        assert stats.max_activation[i] == values.max()  # the SAE's own maximum, exactly
        assert stats.max_activation[i] == pytest.approx(f[:, j].max(), rel=1e-5)
        np.testing.assert_allclose(stats.edges[i], np.linspace(0, values.max(), 9), rtol=1e-12, atol=0)
        assert stats.edges[i][-1] == values.max()
        expected, _ = np.histogram(values, bins=stats.edges[i])
        np.testing.assert_array_equal(stats.histogram[i], expected)
        assert stats.histogram[i].sum() == len(values)  # every firing counted
        assert stats.histogram[i][-1] >= 1  # the maximum sits in the last bin (its right edge included)


def test_logit_tokens_read_decoder_rows_through_the_scaled_unembedding(sae, model):
    hf_model, _ = tiny_hf_model(seed=0)  # the same weights, reached without the bridge
    W_U = hf_model.lm_head.weight.detach().double().T.numpy()
    scale = torch.rand(16, generator=torch.Generator().manual_seed(2)) * 3
    original = model.ln_final.weight.detach().clone()
    with torch.no_grad():
        model.ln_final.weight.copy_(scale)
    try:
        table = decoder_logit_tokens(sae, model, [5, 9], k=4)
        unscaled = decoder_logit_tokens(sae, model, [5, 9], k=4, ln_scale=False)
    finally:
        with torch.no_grad():
            model.ln_final.weight.copy_(original)
    assert list(table.columns) == ["latent", "side", "rank", "token_id", "token", "logit"]
    for with_scale, result in ((True, table), (False, unscaled)):
        for j in (5, 9):
            d = sae.W_dec.detach().double()[j].numpy() * (scale.double().numpy() if with_scale else 1.0)
            logits = d @ W_U
            rows = result[result.latent == j]
            top, bottom = rows[rows.side == "top"], rows[rows.side == "bottom"]
            assert list(top.token_id) == list(np.argsort(-logits)[:4])
            assert list(bottom.token_id) == list(np.argsort(logits)[:4])
            np.testing.assert_allclose(top.logit, np.sort(logits)[::-1][:4], rtol=1e-5)
            assert list(top.token) == [model.tokenizer.decode([t]) for t in top.token_id]
    assert list(table.token_id) != list(unscaled.token_id)  # the scale changes the reading


def test_logit_tokens_of_raw_directions_and_refusal_off_the_residual_stream(sae, model):
    direction = model.W_U.detach()[:, 7].clone()[None]  # promotes token 7 most (W_U's own column)
    table = logit_tokens(model, direction, k=3, ln_scale=False, labels=["probe"])
    assert set(table.latent) == {"probe"}
    expected = int((direction @ model.W_U.detach()).argmax())
    assert int(table[(table.side == "top") & (table["rank"] == 0)].token_id.iloc[0]) == expected
    other = create_sae("relu", 16, 4, metadata={"hook_name": "blocks.0.attn.hook_z"})
    with pytest.raises(ValueError, match="residual stream"):
        decoder_logit_tokens(other, model, [0])
    with pytest.raises(ValueError, match="d_model"):
        logit_tokens(model, torch.zeros(2, 5))


def test_cards_show_density_histogram_logits_and_contexts(sae, model, cache):
    f = _all_latents(sae, cache)
    page = latent_cards(sae, model, cache, [8, 3], k_contexts=3, k_tokens=5, extra={8: {"note": "<i>hi</i>"}},
                        progress=False)
    assert page.count("class='sae-latent-card'") == 2
    assert f"{(f[:, 8] != 0).mean():.3%} of tokens" in page
    assert "<svg" in page and "never fires" in page and "no activation in the cache" in page
    assert "<b style" in page  # the highlighted token of a top context
    assert "<i>hi</i>" in page
    top_token = decoder_logit_tokens(sae, model, [8], k=1).token.iloc[0]
    assert top_token.replace(" ", "␣") in page
    cards = latent_cards(sae, model, cache, [8, 3], k_contexts=3, k_tokens=5, extra={8: {"note": "<i>hi</i>"}},
                         progress=False, as_list=True)
    assert "\n".join(cards) == page
    # The card of a single latent from precomputed parts, without a cache.
    contexts = top_activating_contexts(sae, cache, [8], k=2, progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        latent_card_html(8, contexts=contexts)
    card = latent_card_html(8, title="Meta", density=0.5, contexts=contexts, tokenizer=model.tokenizer)
    assert "Meta" in card and "50.000% of tokens" in card and card.count("<b style") == 2
