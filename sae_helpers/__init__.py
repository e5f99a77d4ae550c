"""sae_helpers: sparse autoencoders on language-model activations, for the SAE book.

The names the notebooks use:

* training: :func:`train_sae`, :func:`train_saes` (many SAEs, one pass), :class:`TrainConfig`
* SAEs (``relu``, ``gated``, ``topk``, ``batchtopk``, ``jumprelu``): :func:`create_sae`,
  :func:`load_sae`, ``sae.encode / decode / save``,
  ``sae(x)`` -> ``SAEOutput(latents, reconstruction, losses)``,
  :meth:`GatedSAE.to_jumprelu`
* evaluation: :func:`evaluate`, :func:`mmcs`, :func:`max_cosine_similarity`,
  :func:`log10_density_histogram`
* synthetic data: :class:`SyntheticFeatures`, :func:`appendix_f_toy`,
  :func:`zipf_firing_probs`
* language models: :func:`load_model` (embedded SmolLM2 by default), :func:`harvest`
  (activation cache), :func:`splice_eval` / :func:`splice_losses` (loss recovered),
  :func:`text_dataset`, :func:`tiny_model` (tests)
* inspection: :func:`top_activating_contexts`, :func:`contexts_html`
* reproducibility: :func:`environment_report`
"""

from .analysis import contexts_html, top_activating_contexts
from .data import SyntheticFeatures, appendix_f_toy, zipf_firing_probs
from .data.text import text_dataset
from .evaluation import (
    best_matching_latents,
    evaluate,
    log10_density_histogram,
    magnitude_ratios,
    match_by_l0,
    max_cosine_similarity,
    mmcs,
)
from .formats import load_sae, save_sae
from .harvest import harvest
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
from .training import TrainConfig, train_sae, train_saes

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
    "contexts_html",
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
    "evaluate",
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
    "zipf_firing_probs",
]
