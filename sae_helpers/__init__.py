"""sae_helpers: sparse autoencoders on language-model activations.

The top level holds what a user calls; everything else lives in its subpackage
(:mod:`~sae_helpers.saes`, :mod:`~sae_helpers.training`, :mod:`~sae_helpers.evaluation`,
:mod:`~sae_helpers.analysis`, :mod:`~sae_helpers.models`, :mod:`~sae_helpers.data`,
:mod:`~sae_helpers.kernels`):

* SAEs (``relu``, ``gated``, ``topk``, ``batchtopk``, ``jumprelu``): :func:`create_sae`,
  :func:`architectures`, :func:`load_sae` (a directory or ``hf://OWNER/REPO/PATH``),
  :func:`save_sae` (the SAELens layout), the base class :class:`SAE`
  (``sae.encode / decode / save``, ``sae(x)`` -> ``SAEOutput(latents, reconstruction, losses)``)
* training: :func:`train_sae`, :func:`train_saes` (many SAEs, one pass), :func:`family_configs`
  (SAEs that differ only in width), :class:`TrainConfig`
* evaluation: :func:`evaluate`, :func:`training_health` and :func:`health_table` (is an SAE
  trained?), :func:`best_matching_latents`, :func:`mmcs`
* data: :func:`text_dataset` (text to harvest), :class:`SyntheticFeatures` (known features)
* language models: :func:`load_model` (embedded SmolLM2 by default), :func:`tiny_model` (tests),
  :func:`harvest` (activation cache), :func:`harvest_sites` (several sites, one forward pass),
  :func:`harvest_splits` (shared train/held-out caches), :func:`splice_eval` (loss recovered)
* inspection: :func:`top_activating_contexts`, :func:`latent_cards`, :func:`firing_density`
* :mod:`meta` (meta-SAEs, atomicity) and :mod:`stitching` (completeness)
* reproducibility: :func:`set_seed`, :func:`environment_report`

The book's chapters are a separate package, ``sae_book``, built on this one.
"""

from . import meta, stitching
from .analysis import firing_density, latent_cards, top_activating_contexts
from .data import SyntheticFeatures
from .data.text import text_dataset
from .evaluation import best_matching_latents, evaluate, mmcs, splice_eval
from .formats import load_sae, save_sae
from .models import harvest, harvest_sites, harvest_splits, load_model, tiny_model
from .reproducibility import environment_report, set_seed
from .saes import SAE, architectures, create_sae
from .training import TrainConfig, family_configs, health_table, train_sae, train_saes, training_health

__version__ = "0.1.0"

__all__ = [
    # SAEs
    "SAE",
    "architectures",
    "create_sae",
    "load_sae",
    "save_sae",
    # training
    "TrainConfig",
    "family_configs",
    "train_sae",
    "train_saes",
    # evaluation
    "best_matching_latents",
    "evaluate",
    "health_table",
    "mmcs",
    "training_health",
    # data
    "SyntheticFeatures",
    "text_dataset",
    # language models
    "harvest",
    "harvest_sites",
    "harvest_splits",
    "load_model",
    "splice_eval",
    "tiny_model",
    # inspection
    "firing_density",
    "latent_cards",
    "top_activating_contexts",
    # atomicity and completeness
    "meta",
    "stitching",
    # reproducibility
    "environment_report",
    "set_seed",
]
