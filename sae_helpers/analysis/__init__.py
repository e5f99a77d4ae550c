"""Analysis of trained SAEs: feature inspection (top-activating contexts, densities,
activation histograms, logit tokens, latent cards)."""

from .inspection import (
    LatentStatistics,
    contexts_html,
    decoder_logit_tokens,
    direction_logits,
    firing_density,
    latent_card_html,
    latent_cards,
    latent_statistics,
    logit_tokens,
    top_activating_contexts,
    unembedding,
)

__all__ = [
    "LatentStatistics",
    "contexts_html",
    "decoder_logit_tokens",
    "direction_logits",
    "firing_density",
    "latent_card_html",
    "latent_cards",
    "latent_statistics",
    "logit_tokens",
    "top_activating_contexts",
    "unembedding",
]
