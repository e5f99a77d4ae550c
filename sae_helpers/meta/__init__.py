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
  batch per epoch), too few for 1e-4 , enough for
  1e-3. ``bench/meta_defaults.py`` measures it; the Methods page
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
meta-latents, the loss plateau); :func:`analyze_meta_sae` computes the numbers of
:class:`MetaSAEResult` for any meta-SAE and base SAE.
"""

from .analysis import (
    MetaSAEResult,
    analyze_meta_sae,
    max_cosine_to_others,
    meta_latent_cards,
    pick_decompositions,
    similarity_to_smaller_sae,
)
from .config import DEFAULT_LR, MIN_STEPS, PAPER, SEED_OFFSET, default_width, meta_config, meta_steps, threshold_rate
from .nulls import (
    COVARIANCE_SEED_OFFSET,
    NULL_SEED_OFFSET,
    NULLS,
    covariance_matched_rows,
    decoder_directions,
    gaussian_like,
    initial_decoder_rows,
    null_rows,
    one_thread,
    random_unit_rows,
)
from .train import train_meta_sae, train_null_meta_sae

__all__ = [
    "analyze_meta_sae",
    "covariance_matched_rows",
    "COVARIANCE_SEED_OFFSET",
    "decoder_directions",
    "DEFAULT_LR",
    "default_width",
    "gaussian_like",
    "initial_decoder_rows",
    "max_cosine_to_others",
    "meta_config",
    "meta_latent_cards",
    "meta_steps",
    "MetaSAEResult",
    "MIN_STEPS",
    "null_rows",
    "NULL_SEED_OFFSET",
    "NULLS",
    "one_thread",
    "PAPER",
    "pick_decompositions",
    "random_unit_rows",
    "SEED_OFFSET",
    "similarity_to_smaller_sae",
    "threshold_rate",
    "train_meta_sae",
    "train_null_meta_sae",
]
