"""The rows a meta-SAE is compared against: random unit rows, rows with the decoder rows' covariance,
and the base SAE's initial decoder rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from ..saes.base import SAE
from ..saes.initial import initial_decoder

#: Added to ``seed`` to seed the random rows of the null (see :func:`random_unit_rows`).
NULL_SEED_OFFSET = 2_000_000


#: Added to ``seed`` to seed the covariance-matched null (see :func:`covariance_matched_rows`).
COVARIANCE_SEED_OFFSET = 3_000_000


#: The nulls :func:`null_rows` draws.
NULLS = ("random", "covariance", "initial")


def decoder_directions(sae: SAE | Tensor) -> Tensor:
    """The base SAE's decoder rows ``[d_sae, d_in]`` scaled to unit norm (float32, CPU).

    A tensor is taken as the rows themselves."""
    rows = sae.W_dec if isinstance(sae, SAE) else sae
    rows = rows.detach().to("cpu", torch.float32)
    if rows.ndim != 2:
        raise ValueError(f"Decoder rows must be a 2-D [d_sae, d_in] tensor, got shape {tuple(rows.shape)}.")
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def random_unit_rows(n: int, d: int, seed: int = 0) -> Tensor:
    """The null's rows: ``n`` random unit vectors in ``d`` dimensions (float32, CPU).

    ``torch.randn(n, d, generator=torch.Generator().manual_seed(NULL_SEED_OFFSET + seed))``,
    each row divided by its norm: directions uniform on the sphere, with no shared structure
    for a meta-SAE to find. (The offset keeps the generator apart from the seeds the trainer
    draws initial decoders from, ``seed`` and ``SEED_OFFSET + seed``.)
    """
    generator = torch.Generator().manual_seed(NULL_SEED_OFFSET + int(seed))
    rows = torch.randn(int(n), int(d), generator=generator, dtype=torch.float32)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one CPU thread (``torch.set_num_threads(1)``; the previous setting is restored).

    A null's rows must have the same bits on every call: the meta-SAE's checkpoint records their hash
    and refuses other rows. Multi-threaded reductions and linear algebra (the covariance's matmul,
    ``eigh``) give results that differ in the last bits with the number of threads, so the rows drawn
    under ``OMP_NUM_THREADS=1`` would not resume a run drawn under two threads. (On a shared machine
    one thread is also much faster here.)
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def gaussian_like(rows: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` draws (float64, CPU) from the Gaussian with the empirical mean and covariance of ``rows``.

    ``mean + z @ L.T`` with ``z`` standard normal and ``L = V diag(sqrt(w))`` from the
    eigendecomposition ``V diag(w) V.T`` of the float64 covariance (divisor ``n - 1``), negative
    eigenvalues (rounding, rank deficiency) clipped at 0: draws stay in the rows' affine span.
    Computed on one thread (:func:`one_thread`): the same bits whatever the thread count.
    """
    x = rows.detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"Expected a non-empty 2-D [rows, d] tensor, got shape {tuple(x.shape)}.")
    with one_thread():
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / max(x.shape[0] - 1, 1)
        w, v = torch.linalg.eigh(cov)
        factor = v * w.clamp_min(0).sqrt()
        z = torch.randn(int(n), x.shape[1], generator=generator, dtype=torch.float64)
        return mean + z @ factor.T


def covariance_matched_rows(rows: SAE | Tensor, seed: int = 0) -> Tensor:
    """The covariance null's rows: as many random unit rows as ``rows`` (float32, CPU), drawn from the
    Gaussian with the mean and covariance of the unit-norm decoder rows (:func:`gaussian_like`) and
    scaled to unit norm like them.

    They keep the rows' anisotropy (a meta-SAE explains more of anisotropic than of isotropic
    directions) but not their sparse structure. Deterministic given ``seed``: the generator is
    ``torch.Generator().manual_seed(COVARIANCE_SEED_OFFSET + seed)``, apart from the trainer's
    and :func:`random_unit_rows`'s, and the rows are computed on one thread (:func:`one_thread`), so
    a checkpoint of this null resumes whatever the thread count.
    """
    with one_thread():  # the same bits whatever the thread count (see one_thread)
        directions = decoder_directions(rows)
        generator = torch.Generator().manual_seed(COVARIANCE_SEED_OFFSET + int(seed))
        draws = gaussian_like(directions, directions.shape[0], generator)
        return (draws / draws.norm(dim=1, keepdim=True).clamp_min(1e-12)).float()


def initial_decoder_rows(sae: SAE | Tensor) -> Tensor:
    """The initial null's rows: the base SAE's decoder rows at initialisation, unit norm (float32, CPU).

    Redrawn from the SAE's ``training_config`` (:func:`~sae_helpers.saes.initial.initial_decoder`).
    """
    if not isinstance(sae, SAE) or not sae.training_config:
        raise ValueError("initial_decoder_rows needs the base SAE with its training_config (its initial decoder is "
                         "redrawn from the training seed): pass an SAE trained with train_sae/train_saes, or loaded "
                         "with load_sae from a directory that holds its training_config.json, not bare decoder rows.")
    return decoder_directions(initial_decoder(sae))


def null_rows(sae: SAE | Tensor, null: str = "random", seed: int = 0) -> Tensor:
    """The rows of the null ``null`` (one of :data:`NULLS`) for the base SAE ``sae``: ``"random"``
    (:func:`random_unit_rows` of its shape), ``"covariance"`` (:func:`covariance_matched_rows`)
    or ``"initial"`` (:func:`initial_decoder_rows`; needs an SAE with a ``training_config``)."""
    if null == "random":
        return random_unit_rows(*decoder_directions(sae).shape, seed=seed)
    if null == "covariance":
        return covariance_matched_rows(sae, seed)
    if null == "initial":
        return initial_decoder_rows(sae)
    raise ValueError(f"Unknown null {null!r}; the nulls are {', '.join(NULLS)}.")
