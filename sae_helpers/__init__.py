"""sae_helpers: sparse autoencoders on language-model activations, for the SAE book.

The top level holds what a chapter or a user calls, in these groups (everything else lives in
its subpackage: :mod:`~sae_helpers.saes`, :mod:`~sae_helpers.training`,
:mod:`~sae_helpers.evaluation`, :mod:`~sae_helpers.analysis`, :mod:`~sae_helpers.models`,
:mod:`~sae_helpers.data`):

* SAEs (``relu``, ``gated``, ``topk``, ``batchtopk``, ``jumprelu``): :func:`create_sae`,
  :func:`architectures`, :func:`load_sae`, :func:`save_sae`, the base class :class:`SAE`
  (``sae.encode / decode / save``, ``sae(x)`` -> ``SAEOutput(latents, reconstruction, losses)``)
  and its subclasses :class:`ReluSAE`, :class:`GatedSAE` (:meth:`GatedSAE.to_jumprelu`),
  :class:`TopKSAE`, :class:`BatchTopKSAE`, :class:`JumpReluSAE`
* training: :func:`train_sae`, :func:`train_saes` (many SAEs, one pass), :func:`family_configs`
  (SAEs that differ only in width), :class:`TrainConfig`, :func:`decoder_drift`
* evaluation: :func:`evaluate`, :func:`mmcs`, :func:`max_cosine_similarity`, :func:`match_by_l0`
  (pairs of runs at matched L0), :func:`magnitude_ratios`, :func:`best_matching_latents`
* training health (is an SAE trained?): :func:`training_health`, :func:`health_table`, :func:`health_display`,
  :func:`health_summary`, :func:`loss_plateau`, :data:`HEALTH_LIMITS`
* data: :class:`SyntheticFeatures`, :func:`appendix_f_toy`, :func:`zipf_firing_probs`
  (synthetic), :func:`text_dataset` (text to harvest)
* language models: :func:`load_model` (embedded SmolLM2 by default), :func:`tiny_model` (tests),
  :func:`harvest` (activation cache), :func:`harvest_sites` (several sites, one forward pass),
  :func:`harvest_splits` (shared train/held-out caches), :func:`splice_eval` /
  :func:`splice_losses` (loss recovered; a list, one result per SAE)
* inspection: :func:`top_activating_contexts`, :func:`contexts_html`, :func:`firing_density`,
  :func:`latent_cards` (HTML latent cards)
* modules for the later chapters: :mod:`meta` (meta-SAEs and their null, atomicity),
  :mod:`stitching` (completeness); :mod:`chapters` holds each chapter's logic and verdicts
* reproducibility: :func:`set_seed`, :func:`environment_report`
"""

from . import chapters, meta, stitching
from .analysis import contexts_html, firing_density, latent_cards, top_activating_contexts
from .data import SyntheticFeatures, appendix_f_toy, zipf_firing_probs
from .data.text import text_dataset
from .evaluation import (
    HEALTH_LIMITS,
    best_matching_latents,
    evaluate,
    health_display,
    health_summary,
    health_table,
    loss_plateau,
    magnitude_ratios,
    match_by_l0,
    max_cosine_similarity,
    mmcs,
    training_health,
)
from .formats import load_sae, save_sae
from .harvest import harvest, harvest_sites, harvest_splits
from .models import load_model, splice_eval, splice_losses, tiny_model
from .reproducibility import environment_report, set_seed
from .saes import SAE, BatchTopKSAE, GatedSAE, JumpReluSAE, ReluSAE, TopKSAE, architectures, create_sae
from .training import TrainConfig, decoder_drift, family_configs, train_sae, train_saes

__version__ = "0.1.0"

__all__ = [
    # SAEs
    "SAE",
    "ReluSAE",
    "GatedSAE",
    "TopKSAE",
    "BatchTopKSAE",
    "JumpReluSAE",
    "architectures",
    "create_sae",
    "load_sae",
    "save_sae",
    # training
    "TrainConfig",
    "decoder_drift",
    "family_configs",
    "train_sae",
    "train_saes",
    # evaluation
    "best_matching_latents",
    "evaluate",
    "magnitude_ratios",
    "match_by_l0",
    "max_cosine_similarity",
    "mmcs",
    # training health
    "HEALTH_LIMITS",
    "health_display",
    "health_summary",
    "health_table",
    "loss_plateau",
    "training_health",
    # data
    "SyntheticFeatures",
    "appendix_f_toy",
    "text_dataset",
    "zipf_firing_probs",
    # language models
    "harvest",
    "harvest_sites",
    "harvest_splits",
    "load_model",
    "splice_eval",
    "splice_losses",
    "tiny_model",
    # inspection
    "contexts_html",
    "firing_density",
    "latent_cards",
    "top_activating_contexts",
    # the later chapters' modules, and each chapter's logic
    "chapters",
    "meta",
    "stitching",
    # reproducibility
    "environment_report",
    "set_seed",
]
