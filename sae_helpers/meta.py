"""Meta-SAEs: SAEs trained on the decoder directions of another SAE.

A meta-SAE (Bussmann et al. 2025, "Showing SAE latents are not atomic using meta-SAEs")
takes each unit-norm decoder row of a *base* SAE as one training example and learns a
sparse dictionary of *meta-latents* that reconstructs them. A base latent then reads as
a few meta-latents with coefficients ("Einstein" = scientist + Germany + famous person),
and a meta-latent as the base latents that activate it most. The paper's setting: a
BatchTopK meta-SAE with 2,304 meta-latents on a 49,152-latent SAE, ``k = 4``, Adam with
learning rate 1e-4, batches of 4,096 rows, 2,000 epochs; it explains 55.47% of the
variance of the decoder rows.

:func:`train_meta_sae` trains one with :func:`~sae_helpers.train_sae` on the rows (a
tensor source: every epoch visits each row once, in a fresh random order). What the
trainer's defaults, made for language-model activations, mean here:

* **no activation scaling** (``normalize_activations=False``): the rows already have unit
  norm, and the paper's learning rate refers to them as they are (the trainer would
  otherwise scale them to norm ``sqrt(d)``);
* **no resampling** (BatchTopK's default): dead meta-latents are revived by the aux-k loss,
  and a meta-latent counts as dead after one epoch without firing (``dead_after`` = the
  steps of one epoch; the trainer's default of 10M tokens means nothing for a few
  thousand rows);
* **Adam with momentum** (``adam_beta1=0.9``, PyTorch's default, as in the paper's code;
  the trainer's default of 0 follows the Gated SAE paper). The trainer's learning-rate
  warm-up and final linear decay are kept;
* **the inference threshold's moving average spans the last tenth of the run**
  (:func:`threshold_rate`; 0.01, the default, for runs of 1,000 steps and more);
* **a seed of its own** (``SEED_OFFSET + seed``): with the base SAE's seed, its initial
  meta-decoder would be the base SAE's initial first rows (see :func:`meta_config`).

Every one of these is a keyword option of :func:`train_meta_sae`. Where this module departs
from the paper by default (the paper's values stay in :data:`PAPER`):

* **width**: the paper's ratio, ``round(3 * d_sae / 64)`` meta-latents (:func:`default_width`);
* **learning rate** 1e-3 (:data:`DEFAULT_LR`; the paper's 1e-4): the paper's 2,000 epochs
  are 24,000 steps over its 49,152 rows but 2,000 for any base of at most 4,096 rows (one
  batch per epoch), too few for 1e-4 (planted atoms at a mean max cosine of 0.87, the loss
  still falling), enough for 1e-3. ``bench/meta_defaults.py`` measures it; the Methods page
  has the tables.
* **at least 2,000 optimiser steps** (:data:`MIN_STEPS`) whatever ``epochs`` says: with the
  default 2,000 epochs it changes nothing, but fewer epochs of a small base (500 epochs of
  4,096 rows are 500 steps) do not make a run of a few hundred steps.
* **a null**: :func:`train_meta_sae` also trains the same configuration on as many random
  unit rows (:func:`random_unit_rows`) and reports its FVE as ``MetaSAEResult.fve_null``:
  a meta-SAE of a few hundred latents explains a sizeable share of the variance of *any*
  set of directions, and only the difference is the base decoder's shared structure.

Two more nulls ask what of that structure is more than the rows' geometry:
:func:`covariance_matched_rows` (random rows with the decoder rows' mean and covariance: their
anisotropy without their sparse structure) and :func:`initial_decoder_rows` (the base SAE's
decoder at initialisation, where training has not yet put any structure).
:func:`train_null_meta_sae` trains the meta-SAE configuration on any of them
(``null=..., rows=null_rows(base, null, seed)``).

The returned meta-SAE is an ordinary SAE (a BatchTopK SAE is saved as the JumpReLU SAE with
its threshold), so ``save`` / ``load_sae`` work on it, and so do the training-health checks
(``sh.training_health(meta_sae, decoder_directions(base))``: near-initial and dead
meta-latents, the loss plateau); :func:`analyse_meta_sae` computes the numbers of
:class:`MetaSAEResult` for any meta-SAE and base SAE.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .evaluation.metrics import max_cosine_similarity
from .kernels.sparse import Support, embedding_decode
from .saes.base import SAE
from .saes.initial import initial_decoder
from .training.checkpoint import has_checkpoint, read_checkpoint
from .training.config import TrainConfig
from .training.train import train_sae

#: Added to ``seed`` to seed the meta-SAE's training (see :func:`meta_config`).
SEED_OFFSET = 1_000_000
#: Added to ``seed`` to seed the random rows of the null (see :func:`random_unit_rows`).
NULL_SEED_OFFSET = 2_000_000
#: Added to ``seed`` to seed the covariance-matched null (see :func:`covariance_matched_rows`).
COVARIANCE_SEED_OFFSET = 3_000_000
#: The nulls :func:`null_rows` draws.
NULLS = ("random", "covariance", "initial")

#: The paper's meta-SAE settings (Bussmann et al. 2025): 2,000 epochs over 49,152 rows in
#: batches of 4,096 are 24,000 optimiser steps.
PAPER = {"base_width": 49_152, "width": 2_304, "k": 4, "lr": 1e-4, "batch_size": 4_096, "epochs": 2_000,
         "steps": 24_000, "fve": 0.5547}

#: This package's default learning rate (the paper's is 1e-4; see :func:`train_meta_sae`).
DEFAULT_LR = 1e-3
#: This package's default minimum number of optimiser steps (see :func:`train_meta_sae`).
MIN_STEPS = 2_000


class MetaSAEResult(NamedTuple):
    """What a meta-SAE makes of a base SAE's decoder rows (all from the inference encoder).

    ``fve``: fraction of variance explained, ``1 - sum_i ||d_i - d_hat_i||^2 / sum_i ||d_i - mean(d)||^2``
    over the unit-norm base decoder rows ``d_i`` (float64 sums).
    ``l0``: mean number of active meta-latents per base latent (a BatchTopK meta-SAE
    trained with ``k`` should give about ``k``).
    ``dead_fraction``: meta-latents active on no row.
    ``decompositions[i]``: base latent ``i``'s active meta-latents as ``(meta_latent,
    coefficient)`` pairs, largest coefficient first.
    ``top_base_latents[m]``: the (up to ``n_top``) base latents that activate meta-latent
    ``m`` most, as ``(base_latent, activation)`` pairs, largest first.
    ``reconstruction_cosine[i]``: cosine between base decoder row ``i`` and its reconstruction.
    ``fve_null``: the FVE of the same meta-SAE configuration (width, k, steps, learning rate,
    batch size, seed) trained on as many random unit rows of the same width
    (:func:`random_unit_rows`): what a meta-SAE of this size explains of rows that share no
    structure. NaN when not computed (``train_meta_sae(..., null=False)``,
    :func:`analyse_meta_sae`).
    """

    fve: float
    l0: float
    dead_fraction: float
    decompositions: list[list[tuple[int, float]]]
    top_base_latents: list[list[tuple[int, float]]]
    reconstruction_cosine: np.ndarray
    fve_null: float = math.nan


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
    one thread is also much faster here: a 576 x 576 ``eigh`` took 0.5 s on one thread and 13 s on
    two beside another 2-thread load.)
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


def _sha256(rows: Tensor) -> str:
    return hashlib.sha256(rows.contiguous().numpy().tobytes()).hexdigest()


def default_width(n_rows: int) -> int:
    """The default number of meta-latents for ``n_rows`` base latents: the paper's ratio,
    2,304 / 49,152 = 3/64 (about ``n_rows / 21``), rounded, at least 1 (216 for 4,608)."""
    return max(1, round(n_rows * PAPER["width"] / PAPER["base_width"]))


def meta_steps(n_rows: int, epochs: int = 2_000, batch_size: int = 4_096, min_steps: int = MIN_STEPS) -> int:
    """Optimiser steps of a meta-SAE run: ``max(ceil(epochs * n_rows / batch), min_steps)``,
    with the batch cut to ``n_rows`` (24,000 for the paper's base; 2,250 for 4,608 rows)."""
    batch_size = min(int(batch_size), n_rows)
    return max(math.ceil(epochs * n_rows / batch_size), int(min_steps))


def meta_config(
    n_rows: int,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = 4_096,
    *,
    min_steps: int = MIN_STEPS,
    **options: Any,
) -> TrainConfig:
    """The :class:`~sae_helpers.TrainConfig` with which :func:`train_meta_sae` trains a meta-SAE
    on ``n_rows`` decoder rows (arguments as there).

    Its ``seed`` is ``SEED_OFFSET + seed``: the trainer draws the initial decoder row by row
    from its seed, so two SAEs of the same input width and seed start with the same first
    rows. A meta-SAE seeded like its base SAE would start with its meta-latents *equal* to
    the base SAE's first initial rows (and to those of every other SAE of that seed), which
    after a short base training are still close to the trained rows.
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}.")
    if not isinstance(min_steps, int) or isinstance(min_steps, bool) or min_steps < 1:
        raise ValueError(f"min_steps must be a positive integer, got {min_steps!r}.")
    batch_size = min(int(batch_size), n_rows)
    steps = meta_steps(n_rows, epochs, batch_size, min_steps)
    sae_options = {"threshold_rate": threshold_rate(steps), **(options.pop("sae_options", None) or {})}
    settings = {"normalize_activations": False, "adam_beta1": 0.9, "dead_after": math.ceil(n_rows / batch_size),
                **options}
    return TrainConfig(arch="batchtopk", width=width if width is not None else default_width(n_rows), k=k,
                       steps=steps, batch_size=batch_size, lr=lr, seed=SEED_OFFSET + seed, sae_options=sae_options,
                       **settings)


def threshold_rate(steps: int) -> float:
    """The rate of the BatchTopK threshold's moving average for a run of ``steps``:
    ``10 / steps`` clipped to [0.01, 0.1], so that the average spans about the last tenth
    of the run (inside the final learning-rate decay). Long runs keep the default 0.01
    (the paper's 24,000 steps do); with it, a run of about a hundred steps ends with a
    threshold that has not settled (one run of 113 steps: inference L0 8.4 for ``k = 4``)."""
    return min(0.1, max(0.01, 10 / steps))


def train_meta_sae(
    sae: SAE | Tensor,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = 4_096,
    *,
    min_steps: int = MIN_STEPS,
    null: bool = True,
    n_top: int = 10,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[SAE, MetaSAEResult]:
    """Train a BatchTopK meta-SAE on the unit-norm decoder rows of ``sae``, and its null.

    Parameters
    ----------
    sae : the base SAE (or its ``[d_sae, d_in]`` decoder rows).
    width : meta-latents; default the paper's ratio, ``round(3 * d_sae / 64)`` (2,304 for
        49,152; about ``d_sae / 21``; :func:`default_width`).
    k : active meta-latents per base latent, on average over a batch (paper: 4).
    epochs, min_steps : the run takes ``max(ceil(epochs * d_sae / batch_size), min_steps)``
        optimiser steps (:func:`meta_steps`). The paper's 2,000 epochs are 24,000 steps over
        its 49,152 rows, 2,250 over 4,608, and 2,000 over any base of at most 4,096 rows (one
        batch per epoch); ``min_steps`` (default :data:`MIN_STEPS`, 2,000) keeps fewer epochs
        of a small base from making a run of a few hundred steps. Pass ``min_steps=1`` for
        exactly ``epochs`` epochs.
    seed : initialisation and row order (the trainer gets ``SEED_OFFSET + seed``; see
        :func:`meta_config`), and the null's rows (:func:`random_unit_rows`).
    lr : Adam learning rate; default :data:`DEFAULT_LR` (1e-3). The paper's 1e-4 belongs to its
        24,000 steps: on 4,096 rows built from 64 planted atoms, 2,000 steps at 1e-4 recover the
        atoms at a mean max cosine of 0.87 with the loss still falling, 1e-3 converges within
        1,000 steps at 0.92-0.99 (``bench/meta_defaults.py``; the Methods page has the tables).
    batch_size : rows per step (paper: 4,096); a batch larger than ``d_sae`` is cut to
        ``d_sae`` rows. Batches are cut from the endless sequence of epochs, so the last batch
        of an epoch may continue into the next.
    null : also train the same configuration on ``d_sae`` random unit rows of the same width
        (:func:`random_unit_rows` with ``seed``) and report its FVE as ``result.fve_null``
        (the FVE a meta-SAE of this size reaches on rows without shared structure). It doubles
        the training time; ``null=False`` skips it (``fve_null`` is then NaN).
    n_top : base latents kept per meta-latent in ``result.top_base_latents``.
    checkpoint_dir : as for :func:`train_sae`: checkpoints, log and the final SAE go there,
        and a rerun resumes (or returns the finished run at once); the null's go to
        ``checkpoint_dir / "null"`` (:func:`train_null_meta_sae`). The checkpoint records a
        hash of the rows; another base SAE in the same directory is an error.
    device, progress : as for :func:`train_sae`.
    options : further :class:`~sae_helpers.TrainConfig` fields; they override the
        defaults of this module (``normalize_activations=False``, ``adam_beta1=0.9``,
        ``dead_after`` = one epoch, ``sae_options={"threshold_rate": threshold_rate(steps)}``).
        The null gets the same.

    Returns
    -------
    (meta_sae, result)
        The trained meta-SAE (inference form: a JumpReLU SAE with the BatchTopK threshold)
        and its :class:`MetaSAEResult` on the rows, with ``fve_null``.
    """
    rows = decoder_directions(sae)
    n = rows.shape[0]
    cfg = meta_config(n, width, k, epochs, seed, lr, batch_size, min_steps=min_steps, **options)
    base_metadata = dict(sae.metadata) if isinstance(sae, SAE) else {}
    metadata = {
        "model_name": base_metadata.get("model_name"),
        "hook_name": None,  # inputs are decoder directions, not activations at a site
        "context_size": None,
        "meta_sae": {"base_d_sae": n, "base_metadata": base_metadata, "epochs": epochs, "k": k},
    }
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    meta = _train_on_rows(rows, cfg, metadata, ckpt, device, progress)
    result = analyse_meta_sae(meta, sae, n_top=n_top)
    if null:
        _, fve_null = train_null_meta_sae(
            n, rows.shape[1], width, k, epochs, seed, lr, batch_size, min_steps=min_steps,
            checkpoint_dir=None if ckpt is None else ckpt / "null", device=device, progress=progress, **options)
        result = result._replace(fve_null=fve_null)
    return meta, result


def train_null_meta_sae(
    n_rows: int,
    d_in: int,
    width: int | None = None,
    k: int = 4,
    epochs: int = 2_000,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    batch_size: int = 4_096,
    *,
    null: str = "random",
    rows: Tensor | None = None,
    min_steps: int = MIN_STEPS,
    checkpoint_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[SAE, float]:
    """A null of :func:`train_meta_sae`: the same meta-SAE configuration (``meta_config``
    of ``n_rows`` rows with these arguments) trained on ``n_rows`` null rows of width ``d_in``.

    By default the null is ``"random"``: ``random_unit_rows(n_rows, d_in, seed)``, drawn here.
    Otherwise ``rows`` are the null's rows (``[n_rows, d_in]``, unit norm, used as they are), and
    ``null`` names them; the nulls that depend on the base SAE come from :func:`null_rows`, e.g.
    ``null="covariance", rows=null_rows(base, "covariance", seed)``. The name is kept in the
    meta-SAE's metadata (``meta_sae.null_kind``).

    Returns the null meta-SAE and its FVE on those rows (:func:`analyse_meta_sae`).
    ``train_meta_sae(..., checkpoint_dir=D)`` keeps the random null in ``D / "null"``; calling this
    with that directory and the same arguments returns the finished run at once. A checkpoint
    directory of other rows (another null, seed or base) is refused.
    """
    if rows is None:
        if null != "random":
            raise ValueError(f"The {null!r} null depends on the base SAE: pass its rows, "
                             f"rows=null_rows(base, {null!r}, seed).")
        rows = random_unit_rows(n_rows, d_in, seed)
        seeds = {"null_seed": NULL_SEED_OFFSET + seed}
    else:
        rows = rows.detach().to("cpu", torch.float32)
        if tuple(rows.shape) != (n_rows, d_in):
            raise ValueError(f"The null's rows have shape {tuple(rows.shape)}; expected [n_rows, d_in] = "
                             f"[{n_rows}, {d_in}].")
        if not torch.allclose(rows.norm(dim=1), torch.ones(n_rows), rtol=0, atol=1e-4):
            raise ValueError("The null's rows must have unit norm, like the decoder rows the meta-SAE is trained on "
                             "(scale them with decoder_directions).")
        seeds = {}
    cfg = meta_config(n_rows, width, k, epochs, seed, lr, batch_size, min_steps=min_steps, **options)
    metadata = {"model_name": None, "hook_name": None, "context_size": None,
                "meta_sae": {"base_d_sae": n_rows, "null": True, "null_kind": null, **seeds,
                             "epochs": epochs, "k": k}}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    meta = _train_on_rows(rows, cfg, metadata, ckpt, device, progress, desc="null meta-SAE")
    return meta, analyse_meta_sae(meta, rows, n_top=0).fve


def _train_on_rows(
    rows: Tensor, cfg: TrainConfig, metadata: dict[str, Any], ckpt: Path | None,
    device: str | torch.device | None, progress: bool, desc: str = "meta-SAE",
) -> SAE:
    """``train_sae`` on ``rows`` with ``cfg``; the rows' hash goes into the metadata, and a
    checkpoint of other rows in ``ckpt`` is refused."""
    digest = _sha256(rows)
    metadata = {**metadata, "meta_sae": {**metadata["meta_sae"], "decoder_sha256": digest}}
    if ckpt is not None and has_checkpoint(ckpt):
        _, info = read_checkpoint(ckpt)
        saved = (info.get("metadata") or {}).get("meta_sae", {}).get("decoder_sha256")
        if saved != digest:
            raise ValueError(
                f"{ckpt} holds a {desc} checkpoint trained on other decoder rows (another base SAE). "
                "Use a checkpoint_dir per base SAE, or delete this one to start over."
            )
    # The rows are the whole data set: its curve on them is the plateau the health checks read.
    return train_sae(rows, **cfg.to_dict(), checkpoint_dir=ckpt, resume=ckpt is not None, device=device,
                     metadata=metadata, progress=progress, heldout=rows)


@torch.no_grad()
def analyse_meta_sae(meta_sae: SAE, sae: SAE | Tensor, n_top: int = 10, batch_size: int = 4096) -> MetaSAEResult:
    """The :class:`MetaSAEResult` of ``meta_sae`` on the unit-norm decoder rows of ``sae``.

    Rows go through ``meta_sae.encode`` / ``decode`` in batches; sums accumulate in float64.
    """
    rows = decoder_directions(sae)
    if rows.shape[1] != meta_sae.d_in:
        raise ValueError(f"The meta-SAE takes rows of width {meta_sae.d_in}; the decoder rows have width "
                         f"{rows.shape[1]}.")
    n = rows.shape[0]
    mean = rows.double().mean(0)
    sq_error = total = 0.0
    cosines = []
    all_rows, all_cols, all_vals = [], [], []
    for start in range(0, n, batch_size):
        x = rows[start : start + batch_size]
        f = meta_sae.encode(x.to(device=meta_sae.device, dtype=meta_sae.dtype))
        support = Support.from_dense(f)  # row-major: sorted by row
        r, c, v = support.rows, support.cols, support.gather(f)
        # f @ W_dec + b_dec through the few active rows (f is sparse; the dense matmul costs as much as encoding)
        x_hat = embedding_decode(support, v, meta_sae.W_dec, meta_sae.b_dec).double().cpu()
        sq_error += float((x.double() - x_hat).pow(2).sum())
        cosines.append(torch.nn.functional.cosine_similarity(x.double(), x_hat, dim=1))
        total += float((x.double() - mean).pow(2).sum())
        all_rows.append(r.cpu() + start)
        all_cols.append(c.cpu())
        all_vals.append(v.float().cpu())
    r, c, v = torch.cat(all_rows), torch.cat(all_cols), torch.cat(all_vals)
    # decompositions: by row, largest coefficient first
    order = torch.sort(v, descending=True, stable=True).indices
    order = order[torch.sort(r[order], stable=True).indices]
    decompositions = _group(r[order], c[order], v[order], n)
    # top base latents: by meta-latent, largest activation first
    order = torch.sort(v, descending=True, stable=True).indices
    order = order[torch.sort(c[order], stable=True).indices]
    top = [group[:n_top] for group in _group(c[order], r[order], v[order], meta_sae.d_sae)]
    active = torch.zeros(meta_sae.d_sae, dtype=torch.bool)
    active[c] = True
    return MetaSAEResult(
        fve=1.0 - sq_error / total if total > 0 else math.nan,
        l0=len(v) / n,
        dead_fraction=float((~active).double().mean()),
        decompositions=decompositions,
        top_base_latents=top,
        reconstruction_cosine=torch.cat(cosines).numpy(),
    )


def _group(keys: Tensor, items: Tensor, values: Tensor, n_groups: int) -> list[list[tuple[int, float]]]:
    """Split ``(item, value)`` pairs sorted by ``keys`` into one list per key ``0..n_groups-1``."""
    counts = torch.bincount(keys, minlength=n_groups).tolist()
    pairs = list(zip(items.tolist(), values.tolist(), strict=True))
    out, start = [], 0
    for count in counts:
        out.append(pairs[start : start + count])
        start += count
    return out


def pick_decompositions(
    result: MetaSAEResult, n: int = 3, min_coefficient: float = 0.2, candidates: Any = None,
    min_cosine: float | None = None,
) -> list[int]:
    """``n`` base latents worth reading: those split into the most meta-latents with a
    coefficient of at least ``min_coefficient``, ties broken by the summed coefficient of
    those meta-latents, then by the lower index. ``candidates`` (indices, or a boolean mask
    over base latents, e.g. latents that fire on held-out text) restricts the choice, and so
    does ``min_cosine``: only latents whose decomposition reconstructs their direction with
    at least that cosine (a direction the meta-SAE explains badly splits into many small,
    arbitrary pieces)."""
    allowed = range(len(result.decompositions))
    if candidates is not None:
        mask = np.asarray(candidates)
        allowed = np.flatnonzero(mask).tolist() if mask.dtype == bool else [int(i) for i in mask]
    if min_cosine is not None:
        allowed = [i for i in allowed if result.reconstruction_cosine[i] >= min_cosine]
    scored = []
    for i in allowed:
        strong = [c for _, c in result.decompositions[i] if c >= min_coefficient]
        scored.append((-len(strong), -sum(strong), i))
    return [i for *_, i in sorted(scored)[:n]]


@torch.no_grad()
def max_cosine_to_others(directions: Tensor, block: int = 4096) -> Tensor:
    """For every row, its max cosine similarity to any *other* row (float64)."""
    x = directions.detach().double().cpu()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for start in range(0, x.shape[0], block):
        sims = x[start : start + block] @ x.T
        idx = torch.arange(start, min(start + block, x.shape[0]))
        sims[idx - start, idx] = -math.inf
        out[start : start + block] = sims.max(dim=1).values
    return out


def similarity_to_smaller_sae(meta_sae: SAE, base_sae: SAE, smaller_sae: SAE) -> dict[str, np.ndarray]:
    """Max cosine similarities that ask whether meta-latents resemble a smaller SAE's latents.

    ``"meta → smaller"``: each meta-decoder row against the smaller SAE's decoder rows;
    ``"base → smaller"``: each base decoder row against the smaller SAE's;
    ``"base → other base"``: each base decoder row against the other base rows.
    """
    return {
        "meta → smaller": max_cosine_similarity(meta_sae.W_dec, smaller_sae.W_dec).numpy(),
        "base → smaller": max_cosine_similarity(base_sae.W_dec, smaller_sae.W_dec).numpy(),
        "base → other base": max_cosine_to_others(base_sae.W_dec).numpy(),
    }


def meta_latent_cards(
    meta_sae: SAE,
    result: MetaSAEResult,
    meta_latents: Any,
    model: Any,
    base_sae: SAE,
    *,
    coefficients: dict[int, float] | None = None,
    n_base: int = 6,
    k_tokens: int = 6,
    ln_scale: bool = True,
) -> str:
    """HTML cards of meta-latents, read as the paper reads them.

    Each card gives the share of base latents whose decomposition uses the meta-latent,
    the tokens its meta-decoder direction promotes and suppresses through the
    unembedding (meta-decoder rows live in the base SAE's activation space), and the
    ``n_base`` base latents that activate it most, each with its own top tokens.
    ``coefficients[m]``, if given, is shown in the title (e.g. the meta-latent's
    coefficient in a decomposition being read).
    """
    from .analysis.inspection import decoder_logit_tokens, latent_card_html, logit_tokens, tokens_html

    meta_latents = [int(m) for m in meta_latents]
    uses = np.zeros(meta_sae.d_sae, dtype=np.int64)
    for pairs in result.decompositions:
        for m, _ in pairs:
            uses[m] += 1
    meta_logits = logit_tokens(model, meta_sae.W_dec.detach()[meta_latents], k_tokens, ln_scale,
                               labels=meta_latents)
    base_ids = sorted({i for m in meta_latents for i, _ in result.top_base_latents[m][:n_base]})
    base_logits = decoder_logit_tokens(base_sae, model, base_ids, k_tokens, ln_scale) if base_ids else None
    cards = []
    for m in meta_latents:
        lines = []
        for i, activation in result.top_base_latents[m][:n_base]:
            assert base_logits is not None
            lines.append(f"<tr><td>{i}</td><td>{activation:.3f}</td>"
                         f"<td style='text-align:left'>{tokens_html(base_logits[base_logits.latent == i], 'top')}"
                         "</td></tr>")
        table = ("<table><tr><th>base latent</th><th>activation</th><th>its top tokens</th></tr>"
                 + "".join(lines) + "</table>") if lines else "<i>activated by no base latent</i>"
        title = f"Meta-latent {m}" + (f" (coefficient {coefficients[m]:.3f})" if coefficients and m in coefficients
                                      else "")
        share = f"{uses[m] / len(result.decompositions):.2%} of base latents ({uses[m]:,})"
        cards.append(latent_card_html(
            m, title=title, logits=meta_logits[meta_logits.latent == m],
            extra={"used by": share, "base latents that activate it most": table},
        ))
    return "\n".join(cards)
