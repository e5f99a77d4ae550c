"""harvest: the cache holds exactly the model's activations at the site, for the stored tokens."""

import datasets
import torch

from sae_helpers import harvest, splice_eval, train_sae
from sae_helpers.data.cache import CacheSource
from sae_helpers.models import activations_at, tiny_model
from sae_helpers.models.tiny import TINY_WORDS


def tiny_corpus(n_docs=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    docs = [" ".join(TINY_WORDS[i] for i in torch.randint(0, len(TINY_WORDS), (40,), generator=gen).tolist())
            for _ in range(n_docs)]
    return datasets.Dataset.from_dict({"text": docs})


def test_harvest_matches_a_full_forward_at_the_site(tmp_path):
    model = tiny_model(seed=0)
    out = harvest(model, "blocks.1.hook_mlp_out", 300, tmp_path / "c", dataset=tiny_corpus(), context_size=16,
                  batch_size=4, shard_tokens=64, progress=False)
    src = CacheSource(out)
    assert src.n == 300 and src.d == 16
    assert src.manifest["model"] == model.model_name and src.manifest["hook_name"] == "blocks.1.hook_mlp_out"
    for shard in range(len(src.shards)):
        token_ids, positions = src.tokens_of_rows(shard)
        full = activations_at(model, token_ids, "blocks.1.hook_mlp_out", stop_early=False)
        expected = full.reshape(-1, 16)[positions]
        torch.testing.assert_close(src.shard_activations(shard), expected, rtol=1e-5, atol=1e-6)
        assert bool((positions % 16 != 0).all())  # BOS position excluded
        assert bool((token_ids[:, 0] == model.tokenizer.bos_token_id).all())


def test_trained_sae_splices_into_the_model(tmp_path):
    model = tiny_model(seed=0)
    corpus = tiny_corpus(60)
    cache = harvest(model, "blocks.0.hook_resid_post", 2000, tmp_path / "c", dataset=corpus, context_size=16,
                    progress=False)
    sae = train_sae(cache, "gated", 32, 0.01, 100, batch_size=64, progress=False, init_sample_size=500,
                    metadata={"model_name": model.model_name, "hook_name": "blocks.0.hook_resid_post",
                              "context_size": 16})
    result = splice_eval(model, sae, 500, dataset=tiny_corpus(40, seed=1), progress=False)
    keys = {"ce_clean", "ce_zero_ablation", "ce_sae", "loss_recovered", "delta_lm_loss", "kl", "l0", "fvu"}
    assert keys <= set(result)
    assert result["n_predictions"] >= 500
    assert result["kl"] >= 0
