"""sae_helpers: sparse autoencoders on language-model activations, for the SAE book.

The names the notebooks use:

* training: :func:`train_sae`, :func:`train_saes` (many SAEs, one pass), :func:`family_configs`
  (SAEs that differ only in width), :func:`decoder_drift`, :class:`TrainConfig`
* SAEs (``relu``, ``gated``, ``topk``, ``batchtopk``, ``jumprelu``): :func:`create_sae`,
  :func:`load_sae`, ``sae.encode / decode / save``,
  ``sae(x)`` -> ``SAEOutput(latents, reconstruction, losses)``,
  :meth:`GatedSAE.to_jumprelu`
* evaluation: :func:`evaluate`, :func:`mmcs`, :func:`max_cosine_similarity`,
  :func:`log10_density_histogram`
* training health (is an SAE trained?): :func:`training_health`, :func:`health_table`, :func:`health_summary`,
  :func:`loss_plateau`, :data:`HEALTH_LIMITS`
* synthetic data: :class:`SyntheticFeatures`, :func:`appendix_f_toy`,
  :func:`zipf_firing_probs`
* language models: :func:`load_model` (embedded SmolLM2 by default), :func:`harvest`
  (activation cache), :func:`harvest_sites` (several sites, one forward pass),
  :func:`harvest_splits` (shared train/held-out caches),
  :func:`splice_eval` / :func:`splice_losses` (loss recovered), :func:`text_dataset`, :func:`tiny_model` (tests)
* inspection: :func:`top_activating_contexts`, :func:`contexts_html`, :func:`firing_density`,
  :func:`latent_statistics`, :func:`logit_tokens` / :func:`decoder_logit_tokens` (tokens a
  direction promotes), :func:`latent_cards` / :func:`latent_card_html` (HTML latent cards)
* meta-SAEs (atomicity): :mod:`meta` -- ``meta.train_meta_sae`` (with its null, ``fve_null``:
  the same configuration on ``meta.random_unit_rows``), ``meta.analyse_meta_sae``,
  ``meta.pick_decompositions``, ``meta.similarity_to_smaller_sae``
* stitching (completeness): :mod:`stitching` -- ``stitching.stitch``, ``stitching.analyze``
  (novel vs reconstruction latents, the cosine proxy), ``stitching.curve``
* reproducibility: :func:`environment_report`
"""

from . import meta, stitching
from .analysis import (
    contexts_html,
    decoder_logit_tokens,
    firing_density,
    latent_card_html,
    latent_cards,
    latent_statistics,
    logit_tokens,
    top_activating_contexts,
)
from .data import SyntheticFeatures, appendix_f_toy, zipf_firing_probs
from .data.text import text_dataset
from .evaluation import (
    HEALTH_LIMITS,
    best_matching_latents,
    evaluate,
    health_summary,
    health_table,
    log10_density_histogram,
    loss_plateau,
    magnitude_ratios,
    match_by_l0,
    max_cosine_similarity,
    mmcs,
    training_health,
)
from .formats import load_sae, save_sae
from .harvest import SplitCaches, harvest, harvest_sites, harvest_splits
from .models import activations_at, hook_names, load_model, splice_eval, splice_losses, tiny_model
from .reproducibility import environment_report, set_seed
from .saes import (
    SAE,
    BatchTopKSAE,
    GatedSAE,
    JumpReluSAE,
    ReluSAE,
    SAEOutput,
    TopKSAE,
    architectures,
    create_sae,
)
from .training import TrainConfig, decoder_drift, family_configs, train_sae, train_saes

__version__ = "0.1.0"

__all__ = [
    "top_activating_contexts",
    "tiny_model",
    "text_dataset",
    "splice_losses",
    "splice_eval",
    "load_model",
    "hook_names",
    "harvest",
    "harvest_sites",
    "harvest_splits",
    "SplitCaches",
    "contexts_html",
    "decoder_logit_tokens",
    "firing_density",
    "latent_card_html",
    "latent_cards",
    "latent_statistics",
    "logit_tokens",
    "meta",
    "activations_at",
    "SAE",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReluSAE",
    "ReluSAE",
    "TopKSAE",
    "SAEOutput",
    "SyntheticFeatures",
    "TrainConfig",
    "appendix_f_toy",
    "best_matching_latents",
    "architectures",
    "create_sae",
    "environment_report",
    "decoder_drift",
    "evaluate",
    "HEALTH_LIMITS",
    "health_summary",
    "health_table",
    "loss_plateau",
    "training_health",
    "family_configs",
    "load_sae",
    "log10_density_histogram",
    "magnitude_ratios",
    "match_by_l0",
    "max_cosine_similarity",
    "mmcs",
    "save_sae",
    "set_seed",
    "train_sae",
    "train_saes",
    "stitching",
    "zipf_firing_probs",
]
