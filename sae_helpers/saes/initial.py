"""Where an SAE started: its initial decoder rows, redrawn from its training seed, and how far
each trained row has moved from them."""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import resolve_dtype
from .base import SAE, uniform_rows

#: A latent is "near its initial row" when its decoder row keeps a cosine above this to it.
NEAR_INITIAL_COSINE = 0.9
#: The largest fraction of near-initial latents a trained SAE may keep (health check and stop rule).
NEAR_INITIAL_LIMIT = 0.05


@torch.no_grad()
def initial_decoder(sae: SAE) -> Tensor:
    """The decoder rows ``[d_sae, d_in]`` that ``sae`` started from (float64, CPU).

    Needs the SAE's ``training_config`` (its :attr:`~SAE.provenance`: set by ``train_sae`` /
    ``train_saes``, saved beside the weights and loaded back): the rows are redrawn from its seed
    (:meth:`SAE.init_weights`) in its parameter dtype.
    """
    config = sae.training_config
    if not config:
        raise ValueError("This SAE has no training_config: its initial decoder is redrawn from the training seed, "
                         "so it needs an SAE trained with train_sae/train_saes (or loaded with load_sae from a "
                         "directory that holds its training_config.json).")
    seed = config.seed if hasattr(config, "seed") else config.get("seed", 0)
    dtype = config.dtype if hasattr(config, "dtype") else config.get("dtype", "float32")
    return initial_rows(sae.d_sae, sae.d_in, int(seed), dtype)


@torch.no_grad()
def initial_rows(d_sae: int, d_in: int, seed: int, dtype: str | torch.dtype = "float32") -> Tensor:
    """The unit decoder rows ``[d_sae, d_in]`` (float64, CPU) that an SAE trained with ``seed`` in
    parameter ``dtype`` starts from (:meth:`SAE.init_weights`)."""
    rows = uniform_rows(d_sae, d_in, torch.Generator().manual_seed(seed)).to(resolve_dtype(dtype))
    rows /= rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return rows.double()


@torch.no_grad()
def near_initial_fraction(W_dec: Tensor, initial: Tensor, cosine: float = NEAR_INITIAL_COSINE) -> float:
    """The fraction of decoder rows ``W_dec`` whose cosine to their own row of ``initial`` exceeds
    ``cosine``: latents that have barely left their random start."""
    return float((_row_cosines(W_dec, initial) > cosine).double().mean())


def _row_cosines(W_dec: Tensor, initial: Tensor) -> Tensor:
    """Per row, the float64 cosine between ``W_dec`` and ``initial`` (on the CPU)."""
    return torch.nn.functional.cosine_similarity(W_dec.detach().double().cpu(), initial.double().cpu(), dim=1)


def decoder_drift(sae: SAE) -> Tensor:
    """Per latent, the cosine between a trained SAE's decoder row and the same row at initialisation.

    Needs the SAE's ``training_config`` (see :func:`initial_decoder`). Values near 1 mean the
    latent has barely left its random start: the run was too short for it, and its decoder
    direction says little about the data (decoder cosines between such SAEs measure the
    initialisation, not what was learned).
    """
    return _row_cosines(sae.W_dec, initial_decoder(sae))
