"""SAE stitching: move latents between two SAEs of one site (the completeness chapter).

Two SAEs of different widths trained on the same site. For every latent ``j`` of the
larger SAE we ask whether it adds information the smaller SAE lacks:

* :func:`stitch` builds a new SAE of the smaller SAE's architecture holding some of its
  latents and some of the larger SAE's. A moved latent keeps its exact activation: its
  pre-activation biases are corrected for the different decoder bias,
  ``(x - b_dec_L) W_j + b_j = (x - b_dec_S) W_j + (b_j + (b_dec_S - b_dec_L) W_j)``.
* :func:`analyze` measures, for every larger-SAE latent at once, the change of MSE when
  it alone is inserted into the smaller SAE (closed form, streamed over the data), its
  max decoder cosine to the smaller SAE (blockwise, bounded memory), the class
  (``novel``: inserting it lowers the MSE) and how well the cosine proxy predicts it.
* :func:`curve` walks from the smaller SAE to the larger one (insert the novel latents,
  then swap groups of matching latents) and records L0, MSE, FVU and, with a model,
  loss recovered along the way: a :class:`Curve` of the points and the step counts.

Definitions (also in the book's methods page):

* ``delta_mse`` is in the units of :func:`~sae_helpers.evaluate`'s ``mse``: the mean over
  tokens **and dimensions** of the squared error, i.e. ``evaluate(stitched)["mse"] -
  evaluate(small)["mse"]``. With ``e = x - x_hat_S`` and ``f_j`` latent ``j``'s activation
  in the larger SAE (unchanged by the move), inserting ``j`` gives
  ``delta_j = mean_n(-2 f_nj (e_n . d_j) + f_nj^2 ||d_j||^2) / d_in``.
* A larger-SAE latent is **novel** when ``delta_mse < 0``. A latent that never fires on
  the data (**dead**: ``delta_mse == 0`` exactly) is *not* novel; dead latents are left
  out of the threshold fit, the proxy accuracy and ``frac_novel`` and counted as ``n_dead``.
* The **proxy** predicts "novel" when ``max_cos < threshold``; unless given, the threshold
  is the one that maximises the proxy's accuracy on the live latents (the midpoint
  between two neighbouring observed ``max_cos`` values).

Supported architectures: ``relu``, ``gated``, ``jumprelu`` and ``batchtopk`` (a trained
BatchTopK SAE *is* a JumpReLU SAE; a raw :class:`~sae_helpers.saes.BatchTopKSAE` is converted
with ``for_inference()``, i.e. threshold inference). ``topk`` is refused: per-token
top-k couples the latents, so adding one changes which others fire.
"""


from .novelty import (
    CHUNK_ELEMENTS,
    DecoderMatch,
    InsertionEffect,
    analyze,
    cosine_nulls,
    decoder_match,
    fit_threshold,
    insertion_effects,
    proxy_accuracy,
    trained_latents,
)
from .surgery import SITE_FIELDS, check_compatible, moved_latents, prepare, stitch
from .walk import (
    GROUPINGS,
    Curve,
    Group,
    Step,
    b_dec_share,
    best_match_groups,
    count_rises,
    curve,
    evaluation_points,
    grouping_report,
    matching_groups,
    plan,
    state_after,
    swap_effects,
    walk_groups,
)

__all__ = [
    "CHUNK_ELEMENTS",
    "SITE_FIELDS",
    "GROUPINGS",
    "Curve",
    "DecoderMatch",
    "Group",
    "InsertionEffect",
    "Step",
    "analyze",
    "b_dec_share",
    "best_match_groups",
    "check_compatible",
    "cosine_nulls",
    "count_rises",
    "curve",
    "decoder_match",
    "evaluation_points",
    "fit_threshold",
    "grouping_report",
    "insertion_effects",
    "matching_groups",
    "moved_latents",
    "plan",
    "prepare",
    "proxy_accuracy",
    "state_after",
    "stitch",
    "swap_effects",
    "trained_latents",
    "walk_groups",
]
