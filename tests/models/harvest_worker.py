"""One process of a (possibly distributed) harvest, launched by tests/test_harvest_distributed.py as
``python tests/models/harvest_worker.py OUT [...]`` (one process) or under ``torchrun --nproc-per-node 2``.

Harvests the tiny model's activations at two sites of a fixed random corpus into ``OUT/<site>``,
with the outlier filter (so rows per batch vary) and small shards and batches (so the processes
take many turns). ``--die-at N``: the last process kills itself with SIGKILL at its N-th batch.
``--n-tokens N``: ask for another number of rows (process 1 only with ``--mismatch``).
``--train``: then train a BatchTopK SAE on the first site's cache (process 0 writes ``OUT/sae``).
"""

import argparse
import importlib
import os
import signal

import datasets
import torch

from sae_helpers import harvest_sites, train_sae
from sae_helpers.models import tiny_model
from sae_helpers.models.tiny import TINY_WORDS

SITES = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
HARVEST = {"context_size": 16, "batch_size": 4, "shard_tokens": 64, "outlier_factor": 1.3, "progress": False}
N_TOKENS = 1000
TRAIN = {"width": 32, "steps": 20, "batch_size": 64, "k": 4, "lr": 3e-3, "seed": 1, "dtype": "float64",
         "init_sample_size": 256, "resample_every": 0, "progress": False, "device": "cpu"}


def corpus(n_docs: int = 60, seed: int = 0) -> datasets.Dataset:
    gen = torch.Generator().manual_seed(seed)
    docs = [" ".join(TINY_WORDS[i] for i in torch.randint(0, len(TINY_WORDS), (40,), generator=gen).tolist())
            for _ in range(n_docs)]
    return datasets.Dataset.from_dict({"text": docs})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--n-tokens", type=int, default=N_TOKENS)
    parser.add_argument("--mismatch", action="store_true", help="only process 1 asks for --n-tokens")
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    n_tokens = args.n_tokens if not args.mismatch or rank == 1 else N_TOKENS
    if args.die_at is not None and rank == size - 1:
        module = importlib.import_module("sae_helpers.models.harvesting")
        compute, calls = module.activations_at_sites, [0]

        def dying(*a, **k):
            calls[0] += 1
            if calls[0] == args.die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return compute(*a, **k)

        module.activations_at_sites = dying
    paths = harvest_sites(tiny_model(seed=0), SITES, n_tokens, args.out, dataset=corpus(), **HARVEST)
    if args.train:
        train_sae(str(paths[SITES[0]]), "batchtopk", checkpoint_dir=f"{args.out}/run", **TRAIN)


if __name__ == "__main__":
    main()
