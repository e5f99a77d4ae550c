"""Evaluation: reconstruction and sparsity metrics, the language model's loss with an SAE spliced in
(:mod:`.splice`), feature recovery, dictionary agreement, comparisons at matched fidelity, results
against training length."""

from .agreement import Agreement, agreement_nulls, agreement_table, dictionary_agreement
from .dose_response import snapshot_table, training_tokens, training_trend
from .frontier import compare_at_equal_fidelity, l0_to_reach, pareto_frontier
from .metrics import MetricAccumulator, cosine_blocks, evaluate, log10_density_histogram, max_cosine_similarity, mmcs
from .recovery import best_matching_latents, magnitude_ratios, match_by_l0
from .splice import check_sae_fits, splice_eval, splice_losses

__all__ = [
    "Agreement",
    "agreement_nulls",
    "agreement_table",
    "dictionary_agreement",
    "MetricAccumulator",
    "best_matching_latents",
    "compare_at_equal_fidelity",
    "cosine_blocks",
    "l0_to_reach",
    "pareto_frontier",
    "evaluate",
    "log10_density_histogram",
    "magnitude_ratios",
    "match_by_l0",
    "max_cosine_similarity",
    "mmcs",
    "snapshot_table",
    "check_sae_fits",
    "splice_eval",
    "splice_losses",
    "training_tokens",
    "training_trend",
]
