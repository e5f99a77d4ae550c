"""One pass over the data that advances many training runs together, batch ``t`` to every run at step ``t``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from .._progress import tqdm
from ..data.sources import ActivationSource
from ..kernels.threads import step_work, threads_for
from .run import TrainingRun


def _resampling_pool(source: ActivationSource, seed: int) -> Callable[[int], Tensor]:
    """``pool(n)``: ``n`` rows sampled from ``source`` with ``seed``, drawn once and shared by the runs of a step."""
    drawn: dict[int, Tensor] = {}

    def pool(n: int) -> Tensor:
        if n not in drawn:
            drawn[n] = source.sample(n, seed)
        return drawn[n]

    return pool


def drive(
    runs: Sequence[TrainingRun],
    source: ActivationSource,
    data_seed: int,
    on_checkpoint: Callable[[int], None] | None = None,
    checkpoint_every: int | None = None,
    progress: bool = True,
    desc: str = "SAEs",
    snapshot_steps: Sequence[int] = (),
    on_snapshot: Callable[[int], None] | None = None,
) -> None:
    """Advance every run to its last step, feeding batch ``t`` to each run at step ``t``.

    ``on_checkpoint(i)`` is called when run ``i`` is due a checkpoint, ``on_snapshot(i)`` when it
    has just taken one of ``snapshot_steps`` steps.

    Runs may start at different steps (after a partial resume): the data stream starts
    at the earliest, and each run joins when the stream reaches its step. With several
    processes (the runs' :class:`~sae_helpers.distributed.World`), each reads the global batch
    ``t`` and trains on its equal share of the rows (process ``r`` of ``W``: the ``r``-th of ``W``
    consecutive slices), so the step is the single-process step on the whole batch.
    """
    pending = [r for r in runs if not r.finished]
    if not pending:
        return
    batch_sizes = {r.cfg.batch_size for r in runs}
    if len(batch_sizes) != 1:
        raise ValueError(
            f"One pass feeds every SAE the same batches: batch_size must agree, got {sorted(batch_sizes)}."
        )
    (batch_size,) = batch_sizes
    world = runs[0].world
    if batch_size % world.size:
        raise ValueError(f"batch_size={batch_size} is the global batch, split evenly over {world.size} processes: "
                         f"choose a multiple of {world.size}.")
    share = batch_size // world.size
    start = min(r.step_count for r in pending)
    # A one-shot iterator cannot be sampled mid-run without losing the rows read ahead:
    # its runs resample from the current batch instead of a larger pool.
    one_shot = bool(getattr(source, "one_shot", False))
    if one_shot and world.distributed:
        raise ValueError(f"{source.description} can be read only once; with {world.size} processes every one reads "
                         "each batch: pass a tensor, a .safetensors file or an activation cache instead.")
    total = max(r.cfg.steps for r in runs)
    snapshots = frozenset(snapshot_steps)
    # Small steps run on one thread (threads.py); the choice follows the shapes, never the load.
    work = step_work(share, [(r.sae.d_in, r.sae.d_sae) for r in pending])
    with (threads_for(work, pending[0].device),
          tqdm(total=total, initial=start, desc=desc, disable=not (progress and world.is_main), unit="step") as bar):
        for step, batch in enumerate(source.batches(batch_size, data_seed, start_step=start), start=start):
            if world.distributed:
                batch = batch[world.rank * share: (world.rank + 1) * share]
            pool = _resampling_pool(source, data_seed + 104_729 * (step + 1))
            for index, run in enumerate(runs):
                if run.finished or run.step_count != step:
                    continue
                record = run.step(batch, None if one_shot else pool)
                if on_snapshot is not None and run.step_count in snapshots:
                    on_snapshot(index)
                every = checkpoint_every or max(1, run.cfg.steps // 10)
                if on_checkpoint is not None and (run.finished or run.step_count % every == 0):
                    on_checkpoint(index)
                if record is not None and len(runs) == 1:
                    bar.set_postfix(loss=f"{record['loss']:.4g}", l0=f"{record['l0']:.1f}",
                                    dead=f"{record['dead_fraction']:.1%}", refresh=False)
            bar.update(1)
            if all(r.finished for r in runs):
                break
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        done = min(r.step_count for r in unfinished)
        raise ValueError(
            f"{source.description} ran out after {done} of {total} steps of {batch_size} activations. "
            "Pass fewer steps, a smaller batch_size, or more data (a re-iterable source is looped over)."
        )
