"""The training loop: one :class:`TrainingRun` per SAE, and the one lifecycle of runs.

A run owns its SAE, optimiser and schedule state and advances by one optimiser step
per :meth:`TrainingRun.step` call, so several runs can share one pass over the data.
:func:`train_runs` opens runs (fresh, resumed from their checkpoint, or finished),
drives them through one pass with checkpoints and finishes them (the final SAE, saved
with its provenance): ``train_saes`` calls it with many configurations, ``train_sae``
with one.
Everything a step depends on is either a pure function of the step number (data
order, schedules) or saved in the checkpoint (parameters, Adam moments, dead-latent
counters, resampling RNG), which makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._dtypes import resolve_dtype
from .._io import atomic_write_json, directory_lock, read_json, recover_dir
from .._progress import tqdm
from ..data.sources import ActivationSource, as_source, data_fingerprint
from ..distributed import (
    SINGLE,
    World,
    all_max,
    all_mean_,
    barrier,
    check_same_everywhere,
    over_batch_group,
    process_group,
)
from ..formats import TRAINING_CONFIG_FILENAME, load_sae, save_sae
from ..reproducibility import default_device, resolve_device  # noqa: F401 (re-exported for sweep)
from ..saes.base import SAE, batch_variance
from ..saes.provenance import Provenance
from ..saes.registry import get_sae_class
from .checkpoint import (
    LOG_FILE,
    SAE_SUBDIR,
    STATE_FILE,
    clean_checkpoint_dir,
    has_checkpoint,
    read_checkpoint,
    read_checkpoint_info,
    write_checkpoint,
)
from .config import EXECUTION_FIELDS, HELDOUT_ROWS, TrainConfig
from .init import activation_scale, initial_b_dec
from .plateau import plateau_check
from .resampling import resample_dead_latents
from .schedules import constant_from, lr_multiplier, sparsity_multiplier
from .threads import step_work, threads_for


def build_training_sae(
    cfg: TrainConfig, d_in: int, device: torch.device, metadata: dict[str, Any] | None = None
) -> SAE:
    """The module that trains ``cfg``'s architecture (weights zero; call ``init_weights``)."""
    cls = get_sae_class(cfg.arch)
    try:
        return cls.for_training(
            d_in, cfg.width, dtype=resolve_dtype(cfg.dtype), device=device, metadata=metadata, **cfg.sae_kwargs()
        )
    except TypeError as err:
        raise ValueError(f"Bad sae_options {cfg.sae_options!r} for architecture {cfg.arch!r}: {err}") from err


@torch.no_grad()
def initial_decoder(sae: SAE) -> Tensor:
    """The decoder rows ``[d_sae, d_in]`` that ``sae`` started from (float64, CPU).

    Needs the SAE's ``training_config`` (its :attr:`~SAE.provenance`: set by :func:`train_sae` /
    ``train_saes``, saved beside the weights and loaded back); the initial rows are redrawn from its seed.
    """
    config = sae.training_config
    if not config:
        raise ValueError("This SAE has no training_config: its initial decoder is redrawn from the training seed, "
                         "so it needs an SAE trained with train_sae/train_saes (or loaded with load_sae from a "
                         "directory that holds its training_config.json).")
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    start = build_training_sae(cfg, sae.d_in, torch.device("cpu"))
    start.init_weights(torch.Generator().manual_seed(cfg.seed))
    return start.W_dec.detach().double()


def decoder_drift(sae: SAE) -> Tensor:
    """Per latent, the cosine between a trained SAE's decoder row and the same row at initialisation.

    Needs the SAE's ``training_config`` (see :func:`initial_decoder`). Values near 1 mean the
    latent has barely left its random start: the run was too short for it, and its decoder
    direction says little about the data (decoder cosines between such SAEs measure the
    initialisation, not what was learned).
    """
    return torch.nn.functional.cosine_similarity(sae.W_dec.detach().double().cpu(), initial_decoder(sae), dim=1)


def check_same_data(info: dict[str, Any], data: str | None, where: str, data_seed: int | None = None) -> None:
    """Refuse a run record ``info`` (a checkpoint's or a finished SAE's) written on other data than
    the fingerprint ``data``, in another data order than ``data_seed`` (the same configuration fed
    other batches is another SAE), or without a record of either to compare with."""
    fix = "Use a new checkpoint_dir / out_dir for this data, or delete that directory to train again on it."
    saved_order = info.get("data_seed")
    if data_seed is not None and saved_order != data_seed:
        if saved_order is None:
            raise ValueError(f"The {where} has no record of its data order. {fix}")
        raise ValueError(
            f"The {where} was trained in data order data_seed={saved_order}; this call asks for data_seed="
            f"{data_seed}. The same configuration fed other batches is another SAE (for instance a family's "
            "control, trained in the family's data order, and the same width from another seed). Use a new "
            "checkpoint_dir / out_dir (data_root) for this one, or delete that directory to train it again."
        )
    saved = info.get("data")
    if data is not None and saved is None:
        raise ValueError(f"The {where} has no record of the data it was trained on. {fix}")
    if data is not None and saved != data:
        raise ValueError(f"The {where} was trained on other data ({saved}; now {data}). {fix}")


#: Subdirectory of a run directory holding its snapshots, one ``step_NNNNNNN/`` SAE each.
SNAPSHOT_SUBDIR = "snapshots"


def heldout_rows(activations, n: int = HELDOUT_ROWS, seed: int = 0) -> Tensor | None:
    """Up to ``n`` rows of ``activations`` (anything :func:`as_source` takes; ``None`` passes
    through), sampled with ``seed``: the fixed held-out set of a training run."""
    if activations is None:
        return None
    return as_source(activations).sample(n, seed).to(torch.float32)


def heldout_fingerprint(heldout: Tensor | None) -> str | None:
    """A hash of the held-out rows a run evaluates on (its plateau verdict depends on them)."""
    if heldout is None:
        return None
    return hashlib.sha256(heldout.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


class TrainingRun:
    """The state of one SAE's training. Build with :meth:`start` or :meth:`restore`.

    With ``heldout`` activations (raw, ``[n, d_in]``) the run evaluates its SAE on them every
    ``cfg.evaluation_interval`` steps (``heldout_fvu``, ``heldout_l0`` in the log) and, with
    ``cfg.plateau_tolerance``, finishes at the first plateau (:func:`~.plateau.plateau_check`).
    """

    def __init__(self, cfg: TrainConfig, sae: SAE, scale: float, device: torch.device, data: str | None = None,
                 world: World = SINGLE, data_seed: int | None = None, heldout: Tensor | None = None) -> None:
        if cfg.plateau_tolerance is not None and heldout is None:
            raise ValueError("plateau_tolerance needs held-out activations to judge the plateau on: pass "
                             "eval_activations=... to train_saes (or heldout=... to train_sae), or set "
                             "plateau_tolerance=None to train exactly steps.")
        if heldout is not None and (heldout.ndim != 2 or heldout.shape[1] != sae.d_in or not len(heldout)):
            raise ValueError(f"heldout must be a non-empty [n, d_in={sae.d_in}] tensor, got shape "
                             f"{tuple(heldout.shape)}.")
        self.cfg = cfg
        self.world = world  # the processes that share each batch (torchrun); one by default
        self.data = data  # the data fingerprint (ActivationSource.fingerprint), checked on resume
        self.data_seed = data_seed  # the data order (drive's data_seed), checked on resume and reuse
        self.sae = sae
        self.scale = scale
        self.device = device
        self.step_count = 0
        self.last_resample_step: int | None = None
        self.n_resampled = 0
        self.log: list[dict[str, Any]] = []
        self.steps_since_fired = torch.zeros(cfg.width, dtype=torch.long, device=device)
        self.heldout = None if heldout is None else heldout.to(device=device, dtype=sae.dtype)
        self.heldout_id = heldout_fingerprint(heldout)
        self.plateau_step: int | None = None
        self.resample_generator = torch.Generator().manual_seed(cfg.seed + 12_345)
        scales = sae.lr_scales()
        groups = [
            {"params": [p for n, p in sae.named_parameters() if scales.get(n, 1.0) == scale], "lr_scale": scale}
            for scale in sorted(set(scales.get(n, 1.0) for n, _ in sae.named_parameters()))
        ]
        self.optimizer = torch.optim.Adam(
            groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.beta2), foreach=True
        )
        self.log_every = max(1, cfg.steps // 200)

    # ------------------------------------------------------------------ construction
    @classmethod
    def start(
        cls, cfg: TrainConfig, sample: Tensor, device: torch.device, metadata: dict[str, Any] | None = None,
        data: str | None = None, world: World = SINGLE, data_seed: int | None = None, heldout: Tensor | None = None,
    ) -> TrainingRun:
        """A fresh run, initialised from a data ``sample`` (``b_dec``, activation scale); ``data``
        is the fingerprint of the data it trains on, ``data_seed`` the order it is fed in,
        ``heldout`` the rows it is evaluated on. Every process of ``world`` must pass the same
        sample and held-out rows."""
        d_in = sample.shape[1]
        sae = build_training_sae(cfg, d_in, device, metadata)
        sae.init_weights(torch.Generator().manual_seed(cfg.seed))
        sample = sample.double()
        scale = activation_scale(sample) if cfg.normalize_activations else 1.0
        with torch.no_grad():
            sae.b_dec.copy_(initial_b_dec(sample * scale, cfg.b_dec_init))
        return cls(cfg, sae, scale, device, data, world, data_seed, heldout)

    def fingerprint(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "fingerprint": self.cfg.fingerprint(), "d_in": self.sae.d_in,
                "data": self.data, "data_seed": self.data_seed}

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON info that describe this run completely."""
        tensors: dict[str, Tensor] = {}
        for name, param in self.sae.named_parameters():
            tensors[f"sae.{name}"] = param
            for key, value in self.optimizer.state.get(param, {}).items():
                tensors[f"adam.{name}.{key}"] = torch.as_tensor(value).reshape(-1) if key == "step" else value
        tensors["steps_since_fired"] = self.steps_since_fired
        tensors["resample_rng"] = self.resample_generator.get_state()
        info = {
            **self.fingerprint(),
            "step": self.step_count,
            "world_size": self.world.size,
            "scale": self.scale,
            "last_resample_step": self.last_resample_step,
            "n_resampled": self.n_resampled,
            "plateau_step": self.plateau_step,
            "heldout": self.heldout_id,
            "metadata": self.sae.metadata,
            "log": self.log,
        }
        return tensors, info

    @classmethod
    def restore(
        cls, cfg: TrainConfig, d_in: int, tensors: dict[str, Tensor], info: dict[str, Any], device: torch.device,
        where: str = "checkpoint", data: str | None = None, world: World = SINGLE, data_seed: int | None = None,
        heldout: Tensor | None = None,
    ) -> TrainingRun:
        """Rebuild a run from :meth:`state` output, refusing another configuration, other data or
        another data order (``data``, ``data_seed``: see :func:`check_same_data`), and a damaged or
        edited checkpoint (a missing tensor, a wrong shape, Adam steps that disagree with ``step``)."""
        if info.get("fingerprint") != cfg.fingerprint() or info.get("d_in") != d_in:
            saved = info.get("config", {})
            diffs = [
                f"{k}: checkpoint {saved.get(k)!r}, now {v!r}"
                for k, v in cfg.to_dict().items()
                if saved.get(k) != v
            ]
            if info.get("d_in") != d_in:
                diffs.append(f"activation width: checkpoint {info.get('d_in')}, now {d_in}")
            raise ValueError(
                f"The {where} was written by a run with a different configuration ({'; '.join(diffs) or 'unknown'}). "
                "Pass the same settings to resume it, or use a new checkpoint_dir (or resume=False) to start over."
            )
        check_same_data(info, data, where, data_seed=data_seed)
        saved_world = info.get("world_size", 1)
        if saved_world != world.size:
            raise ValueError(
                f"The {where} was written by a run on {saved_world} process(es); this one runs on {world.size}. "
                f"Resume it with the same number of processes (torchrun --nproc-per-node {saved_world}, or plain "
                "python for 1), or use a new checkpoint_dir to start over. batch_size is the global batch either way."
            )
        sae = build_training_sae(cfg, d_in, device, info.get("metadata"))
        run = cls(cfg, sae, 1.0, device, data, world, data_seed, heldout)
        if info.get("heldout") != run.heldout_id and (info.get("step") or 0) > 0 and info.get("heldout") is not None:
            raise ValueError(
                f"The {where} was evaluated on other held-out activations (hash {info.get('heldout')}; now "
                f"{run.heldout_id}): its held-out curve, and the plateau judged on it, would mix two data sets. Pass "
                "the same eval_activations to resume it, or use a new checkpoint_dir to start over.")
        run._check_state(tensors, info, where)
        run.scale = float(info["scale"])
        params = dict(sae.named_parameters())
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[f"sae.{name}"])
        for name, param in params.items():
            keys = [k for k in tensors if k.startswith(f"adam.{name}.")]
            if keys:
                state = {k.rsplit(".", 1)[1]: tensors[k].to(device) for k in keys}
                state["step"] = state["step"].reshape(()).cpu()
                run.optimizer.state[param] = state
        run.steps_since_fired = tensors["steps_since_fired"].to(device)
        run.resample_generator.set_state(tensors["resample_rng"])
        run.step_count = int(info["step"])
        run.last_resample_step = info.get("last_resample_step")
        run.n_resampled = int(info.get("n_resampled", 0))
        run.plateau_step = info.get("plateau_step")
        run.log = list(info.get("log", []))
        return run

    def _check_state(self, tensors: dict[str, Tensor], info: dict[str, Any], where: str) -> None:
        """Refuse a tampered or inconsistent checkpoint: every tensor :meth:`state` writes must be
        there with its shape (Adam state for every trained parameter once the run has stepped; BatchTopK's
        threshold is not trained by Adam), and the Adam step counts must equal the trainer's step."""
        step = info.get("step")

        def refuse(fault: str) -> None:
            raise ValueError(f"The {where} is damaged or was edited: {fault}. Delete it to start over (or restore "
                             "it from a backup); resuming it would not continue the run it says it is.")

        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= self.cfg.steps:
            refuse(f"step is {step!r}, not an integer in [0, steps={self.cfg.steps}]")
        if not isinstance(info.get("scale"), (int, float)) or not math.isfinite(info["scale"]) or info["scale"] <= 0:
            refuse(f"the activation scale is {info.get('scale')!r}, not a positive number")
        rng = self.resample_generator.get_state()
        expected: dict[str, tuple[tuple[int, ...], torch.dtype | None]] = {
            "steps_since_fired": ((self.cfg.width,), torch.long), "resample_rng": (tuple(rng.shape), rng.dtype)}
        for name, param in self.sae.named_parameters():
            expected[f"sae.{name}"] = (tuple(param.shape), None)
            if step and param.requires_grad:  # Adam's step count and moments, once it has stepped
                expected[f"adam.{name}.step"] = ((1,), None)
                expected[f"adam.{name}.exp_avg"] = (tuple(param.shape), None)
                expected[f"adam.{name}.exp_avg_sq"] = (tuple(param.shape), None)
        missing = [name for name in expected if name not in tensors]
        if missing:
            refuse(f"tensor(s) {missing} are missing from {STATE_FILE}")
        extra = sorted(name for name in tensors if name.startswith("adam.") and name not in expected)
        if extra:
            refuse(f"{STATE_FILE} holds Adam state {extra} that a run at step {step} does not have")
        for name, (shape, dtype) in expected.items():
            tensor = tensors[name]
            if tuple(tensor.shape) != shape or (dtype is not None and tensor.dtype != dtype):
                refuse(f"tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, expected "
                       f"{dtype or 'float'} {shape}")
            if dtype is None and not (tensor.is_floating_point() and bool(torch.isfinite(tensor).all())):
                refuse(f"tensor {name!r} is not a finite floating-point tensor")
        adam_steps = {int(tensors[name]) for name in expected if name.endswith(".step")}
        if adam_steps and adam_steps != {step}:
            refuse(f"its Adam state has taken {sorted(adam_steps)} step(s), the trainer says step {step}")

    # ------------------------------------------------------------------ training
    @property
    def finished(self) -> bool:
        """At the step cap, or at a plateau (with ``plateau_tolerance``)."""
        return self.step_count >= self.cfg.steps or self.plateau_step is not None

    @torch.no_grad()
    def evaluate_heldout(self) -> dict[str, float]:
        """FVU and L0 of the SAE as it will be used (its inference encoder) on the held-out rows."""
        assert self.heldout is not None
        squared = variance = torch.zeros((), dtype=torch.float64, device=self.device)
        active = torch.zeros((), dtype=torch.long, device=self.device)
        x_all = self.heldout * self.scale if self.scale != 1.0 else self.heldout
        mean = x_all.double().mean(0)
        for x in x_all.split(self.cfg.batch_size):
            latents = self.sae.encode(x)
            squared = squared + (x - self.sae.decode(latents)).double().pow(2).sum()
            variance = variance + (x.double() - mean).pow(2).sum()
            active = active + (latents != 0).sum()
        n = x_all.shape[0]
        return {"heldout_fvu": float(squared / variance), "heldout_l0": float(active) / n}

    def plateau(self):
        """The plateau verdict of the log so far (:func:`~.plateau.plateau_check`)."""
        return plateau_check(self.log, tolerance=self.cfg.plateau_tolerance or math.inf, window=self.cfg.window,
                             constant_from=constant_from(self.cfg, self.last_resample_step))

    @property
    def resamples_now(self) -> bool:
        """Whether the next :meth:`step` resamples dead latents (and so wants an input pool)."""
        cfg, step = self.cfg, self.step_count
        interval = cfg.resample_interval
        return bool(interval) and step > 0 and step % interval == 0 and step < cfg.decay_start_step

    def _maybe_resample(self, x: Tensor, pool: Callable[[int], Tensor] | None) -> None:
        if not self.resamples_now:
            return
        cfg = self.cfg
        dead = self.steps_since_fired >= cfg.dead_window
        if not bool(dead.any()):
            return
        inputs = x if pool is None else pool(cfg.resample_pool_size).to(device=self.device, dtype=self.sae.dtype)
        if pool is not None and self.scale != 1.0:
            inputs = inputs * self.scale
        n = resample_dead_latents(self.sae, self.optimizer, dead, inputs, self.resample_generator)
        if n:
            self.steps_since_fired[dead] = 0
            self.last_resample_step = self.step_count
            self.n_resampled += n

    @torch.no_grad()
    def _record_firing(self, latents: Tensor) -> None:
        """Dead-latent bookkeeping: reset the counter of every latent that fired on the batch.

        A latent fired iff its largest activation is positive: one reduction over the
        batch, without a [batch, d_sae] boolean tensor.
        """
        fired = latents.reshape(-1, latents.shape[-1]).amax(0) > 0
        if self.world.distributed:  # fired anywhere in the whole batch
            fired = all_max(fired.to(torch.uint8), self.world) > 0
        self.steps_since_fired += 1
        self.steps_since_fired.masked_fill_(fired, 0)

    def step(self, batch: Tensor, pool: Callable[[int], Tensor] | None = None) -> dict[str, Any] | None:
        """One optimiser step on ``batch``; returns a log record on logging steps.

        ``pool(n)`` gives ``n`` raw training rows to resample dead latents from (default:
        the batch itself); it is called only on resampling steps.
        """
        cfg, sae, step = self.cfg, self.sae, self.step_count
        if batch.shape[1] != sae.d_in:
            raise ValueError(f"Batch width {batch.shape[1]} does not match the SAE's d_in={sae.d_in}.")
        x = batch.to(device=self.device, dtype=sae.dtype, non_blocking=True)
        if self.scale != 1.0:
            x = x * self.scale
        self._maybe_resample(x, pool)

        lr = cfg.lr * lr_multiplier(cfg, step, self.last_resample_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        coefficient = cfg.sparsity_coefficient
        sparsity_coefficient = None if coefficient is None else coefficient * sparsity_multiplier(cfg, step)

        with over_batch_group(self.world):  # whole-batch statistics span every process's rows
            if sae.uses_dead_mask:
                out = sae(x, dead_mask=self.steps_since_fired >= cfg.dead_window)
            else:
                out = sae(x)
        losses = out.losses
        loss = losses["reconstruction"]
        if sparsity_coefficient is not None:
            loss = loss + sparsity_coefficient * losses["sparsity"]
        if "auxiliary" in losses:
            loss = loss + losses["auxiliary"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Each process's loss is the mean over its equal share of the batch: the mean of their
        # gradients is the gradient of the whole batch's loss.
        all_mean_([p.grad for p in sae.parameters() if p.grad is not None], self.world)
        sae.remove_parallel_decoder_grad_()
        self.optimizer.step()
        sae.normalize_decoder_()

        self._record_firing(out.latents)
        self.step_count += 1

        evaluates = self.heldout is not None and (
            self.step_count % self.cfg.evaluation_interval == 0 or self.step_count >= self.cfg.steps)
        if self.step_count % self.log_every and not self.finished and not evaluates:
            return None
        with torch.no_grad(), over_batch_group(self.world):
            variance = batch_variance(x)  # of the whole batch, as every value below
            # Means over the batch: with several processes, the mean of their equal shares' means.
            measured = torch.stack([value.detach().double() for value in (
                loss, *losses.values(), (out.latents > 0).sum().double() / x.shape[0])])
            all_mean_([measured], self.world)
            values = [float(v) for v in measured]
            reconstruction = measured[1 + list(losses).index("reconstruction")].to(variance.dtype)
            record = {
                "step": self.step_count,
                "loss": values[0],
                **dict(zip(losses, values[1:-1], strict=True)),
                "l0": values[-1],
                "fvu": float(reconstruction / variance),
                "dead_fraction": float((self.steps_since_fired >= cfg.dead_window).double().mean()),
                "lr": lr,
                "sparsity_coefficient": sparsity_coefficient,
                "n_resampled": self.n_resampled,
            }
            if evaluates:
                record.update(self.evaluate_heldout())
        if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
            raise FloatingPointError(
                f"Training diverged at step {self.step_count} (loss {record['loss']}). Lower lr "
                f"(now {cfg.lr}) or the sparsity coefficient, or check the activations for outliers."
            )
        self.log.append(record)
        if evaluates and self.cfg.plateau_tolerance is not None and self.plateau().plateaued:
            self.plateau_step = self.step_count
        return record

    def final_sae(self) -> SAE:
        """A copy of the SAE with the activation scale folded in (takes raw activations)."""
        sae = copy.deepcopy(self.sae)
        sae.fold_activation_scale_(self.scale)
        sae = sae.for_inference()
        sae.provenance = Provenance({**self.cfg.to_dict(), "world_size": self.world.size}, list(self.log))
        return sae


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


def write_run(run_dir: Path, run: TrainingRun) -> None:
    """Checkpoint ``run`` in ``run_dir``: ``checkpoint/`` (atomic) and ``training_log.json`` (atomic)."""
    write_checkpoint(run_dir, *run.state())
    atomic_write_json(run_dir / LOG_FILE, run.log)


def open_run(
    cfg: TrainConfig, source: ActivationSource, device: torch.device, run_dir: Path | None,
    data: str | None, metadata: dict[str, Any] | None, resume: bool = True, world: World = SINGLE,
    data_seed: int | None = None, heldout: Tensor | None = None,
) -> TrainingRun:
    """``cfg``'s run: resumed from the checkpoint in ``run_dir`` (refused unless ``resume``), else
    started from a sample of ``source``; ``data`` is the source's fingerprint (``None`` without
    ``run_dir``), ``data_seed`` the order the run is fed in, ``heldout`` the rows it is evaluated on."""
    if run_dir is not None:
        if world.is_main:
            clean_checkpoint_dir(run_dir)
        barrier(world)
        if has_checkpoint(run_dir):
            if not resume:
                raise FileExistsError(
                    f"{run_dir} already holds a checkpoint. Pass resume=True to continue it, "
                    "or choose another checkpoint_dir (nothing was overwritten)."
                )
            tensors, info = read_checkpoint(run_dir)
            return TrainingRun.restore(cfg, source.d, tensors, info, device, where=f"checkpoint in {run_dir}",
                                       data=data, world=world, data_seed=data_seed, heldout=heldout)
    return TrainingRun.start(cfg, source.sample(cfg.init_sample_size, cfg.seed), device, metadata, data, world,
                             data_seed, heldout)


#: Beside a finished run's SAE: the fingerprint and order of the data it was trained on.
TRAINING_DATA = "training_data"


def finished_sae(run_dir: Path, cfg: TrainConfig, data: str | None, data_seed: int | None = None) -> SAE | None:
    """The run's saved SAE if it is finished with ``cfg``, after checking it was trained on ``data``
    in the order ``data_seed``: the record saved with the SAE (``sae/training_data.json``), else its
    checkpoint's. A run with neither is trained again (``None``)."""
    sae_dir = recover_dir(run_dir / SAE_SUBDIR)
    config_file = sae_dir / TRAINING_CONFIG_FILENAME
    saved = read_json(config_file, what="Training config") if config_file.is_file() else None
    if saved is None or {k: v for k, v in saved.items() if k not in EXECUTION_FIELDS} != cfg.to_dict():
        return None
    record = sae_dir / f"{TRAINING_DATA}.json"
    if record.is_file():
        info = read_json(record, what="Training data record")
    elif has_checkpoint(run_dir):
        info = read_checkpoint_info(run_dir)
    else:
        warnings.warn(f"The finished run in {run_dir} has no record of the data it was trained on ({record}, or "
                      "its checkpoint): training it again.", stacklevel=3)
        return None
    check_same_data(info, data, f"finished run in {run_dir}", data_seed=data_seed)
    return load_sae(sae_dir)  # with its provenance: this configuration and the saved log


def train_runs(
    source: ActivationSource,
    cfgs: Sequence[TrainConfig],
    run_dirs: Sequence[Path | None],
    *,
    data_seed: int,
    device: torch.device,
    metadata: dict[str, Any] | None = None,
    resume: bool = True,
    reuse_finished: bool = False,
    checkpoint_every: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    world: World | None = None,
    heldout: Tensor | None = None,
    snapshots: Sequence[int] = (),
) -> list[SAE]:
    """The lifecycle of training runs, one per configuration: open -> one pass -> finish.

    Each run with a directory (``run_dirs[i]``, else ``None``: nothing written) is resumed from
    its checkpoint there (refused unless ``resume``), or, with ``reuse_finished``, taken as the
    finished SAE saved there when that was trained with the same configuration on the same data.
    The others start afresh. :func:`drive` then feeds all of them the same batches (order
    ``data_seed``), checkpointing each (:func:`write_run`); each finished run's SAE (with its
    :class:`Provenance`) is saved to ``sae/`` in its directory. The SAEs' metadata is the
    source's (``model_name``, ``hook_name``, ``context_size`` of a cache), updated by ``metadata``.

    Under ``torchrun`` (:func:`~sae_helpers.distributed.process_group`, or ``world``) every
    process runs this with the same arguments and trains on its share of each batch; only
    process 0 writes files (each process returns the same SAEs, once process 0 has saved them).
    ``world=SINGLE`` trains in this process alone, whatever the launcher.

    ``heldout``: raw activations every run is evaluated on (see :class:`TrainingRun`).
    ``snapshots``: steps at which each run with a directory saves its SAE as it is then, to
    ``snapshots/step_NNNNNNN/`` (:func:`load_snapshots`); at constant learning rate a snapshot is
    what a shorter run would have given (:meth:`TrainConfig.truncated`).
    """
    world = process_group(device) if world is None else world
    with contextlib.ExitStack() as locks:
        if world.is_main:  # one training process per run directory
            for run_dir in dict.fromkeys(d for d in run_dirs if d is not None):
                locks.enter_context(directory_lock(
                    run_dir, "training an SAE", "Wait for it to finish, or train into another checkpoint_dir / "
                    "out_dir: two trainings in one directory would overwrite each other's checkpoints."))
        return _train_runs(source, cfgs, run_dirs, data_seed=data_seed, device=device, metadata=metadata,
                           resume=resume, reuse_finished=reuse_finished, checkpoint_every=checkpoint_every,
                           progress=progress, desc=desc, world=world, heldout=heldout, snapshots=snapshots)


def _train_runs(source: ActivationSource, cfgs: Sequence[TrainConfig], run_dirs: Sequence[Path | None], *,
                data_seed: int, device: torch.device, metadata: dict[str, Any] | None, resume: bool,
                reuse_finished: bool, checkpoint_every: int | None, progress: bool, desc: str | None, world: World,
                heldout: Tensor | None, snapshots: Sequence[int]) -> list[SAE]:
    data = data_fingerprint(source) if world.distributed or any(d is not None for d in run_dirs) else None
    check_same_everywhere((data, [cfg.fingerprint() for cfg in cfgs], data_seed, heldout_fingerprint(heldout)),
                          "the data, the configurations, the data order and the held-out rows", world)
    if metadata is None or isinstance(metadata, Mapping):  # anything else: the SAE refuses it, clearly
        metadata = {**source.metadata, **(metadata or {})}
    saes: list[SAE | None] = [None] * len(cfgs)
    runs: list[TrainingRun] = []
    slots: list[int] = []
    for i, (cfg, run_dir) in enumerate(zip(cfgs, run_dirs, strict=True)):
        done = (finished_sae(run_dir, cfg, data, data_seed=data_seed)
                if reuse_finished and run_dir is not None else None)
        if done is not None:
            saes[i] = done
            continue
        runs.append(open_run(cfg, source, device, run_dir, data, metadata, resume, world, data_seed, heldout))
        slots.append(i)
    starts: list[str | int] = ["finished" if sae is not None else 0 for sae in saes]
    for run, slot in zip(runs, slots, strict=True):
        starts[slot] = run.step_count
    check_same_everywhere(starts, "where each run starts (finished, or the step its checkpoint resumes from); the "
                          "run directories must be on a filesystem every process shares", world)

    def checkpoint(index: int) -> None:
        run_dir = run_dirs[slots[index]]
        if run_dir is not None and world.is_main:
            write_run(run_dir, runs[index])

    def snapshot(index: int) -> None:
        run_dir = run_dirs[slots[index]]
        if run_dir is not None and world.is_main:
            save_sae(runs[index].final_sae(), snapshot_dir(run_dir, runs[index].step_count))

    opened_at = [run.step_count for run in runs]
    drive(runs, source, data_seed, checkpoint, checkpoint_every, progress, desc=desc or f"{len(runs)} SAEs, one pass",
          snapshot_steps=snapshots, on_snapshot=snapshot)
    for index, (run, slot) in enumerate(zip(runs, slots, strict=True)):
        run_dir = run_dirs[slot]
        writes = run_dir is not None and world.is_main
        if writes and run.step_count == opened_at[index]:
            write_run(run_dir, run)  # a run resumed finished
        sae = run.final_sae()
        if writes:
            save_sae(sae, run_dir / SAE_SUBDIR, **{TRAINING_DATA: {"data": data, "data_seed": data_seed}})
        saes[slot] = sae
    barrier(world)  # every process returns once the files are written
    return [sae for sae in saes if sae is not None]


def snapshot_dir(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps its SAE as it was after ``step`` steps."""
    return Path(run_dir) / SNAPSHOT_SUBDIR / f"step_{int(step):07d}"


def load_snapshots(run_dir: str | os.PathLike) -> dict[int, SAE]:
    """A run directory's snapshots by step (in step order), each with its provenance (the
    configuration and the log up to that step); empty when it has none."""
    root = Path(run_dir) / SNAPSHOT_SUBDIR
    found = sorted((int(p.name.removeprefix("step_")), p) for p in root.glob("step_*")
                   if p.is_dir() and p.name.removeprefix("step_").isdigit()) if root.is_dir() else []
    return {step: load_sae(path) for step, path in found}


def train_sae(
    activations,
    arch: str,
    width: int,
    l1_coefficient: float | None = None,
    steps: int | None = None,
    *,
    k: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    device: str | torch.device | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    heldout=None,
    snapshots: Sequence[int] = (),
    **options: Any,
) -> SAE:
    """Train one SAE and return it, ready for raw activations: ``train_saes`` with one configuration,
    kept in ``checkpoint_dir`` itself.

    Parameters
    ----------
    activations : a 2-D tensor ``[n, d]``, a ``.safetensors`` file holding one 2-D
        tensor named ``activations``, an activation cache directory, or an iterable of
        ``[batch, d]`` tensors.
    arch, width, l1_coefficient, steps, k, options : the :class:`TrainConfig` (each of its
        fields may be passed as a keyword: ``batch_size``, ``lr``, ``seed``, ``l0_coefficient``,
        ``sae_options`` ...; its defaults apply). ``steps`` is required; the sparsity setting is
        ``l1_coefficient`` for ``"relu"`` and ``"gated"``, ``k`` for ``"topk"`` and
        ``"batchtopk"``, ``l0_coefficient`` for ``"jumprelu"``. ``seed`` also sets the data order.
    checkpoint_dir : where to write atomic checkpoints (every ``checkpoint_every``
        steps, default ``steps // 10``, and at the end), the training log
        (``training_log.json``) and the final SAE (``sae/``).
    resume : continue from the checkpoint in ``checkpoint_dir``; the result equals an
        uninterrupted run. A finished run returns at once. The checkpoint records a
        fingerprint of the data (:meth:`ActivationSource.fingerprint`): resuming it on
        other activations, or without such a record, is an error. Without ``resume``, an
        existing checkpoint is an error.
    device : ``"cpu"``, ``"cuda"``...; default CUDA when available (``"cuda"`` without CUDA is an error).
    metadata : stored in the SAE's ``cfg.json`` (``model_name``, ``hook_name``, ``context_size``);
        an activation cache supplies the ones not given here.
    progress : show a progress bar with loss, L0 and dead fraction.
    heldout : held-out activations (anything ``activations`` accepts; up to :data:`HELDOUT_ROWS`
        rows are used) to evaluate on every ``eval_every`` steps; needed by ``plateau_tolerance``.
    snapshots : steps at which to save the SAE in ``checkpoint_dir/snapshots/`` (:func:`load_snapshots`).

    The returned SAE carries its :attr:`~SAE.provenance` (the configuration and the training
    log, also as ``sae.training_config`` and ``sae.training_log``); ``sae.save(path)`` stores it
    beside the weights and ``load_sae`` reads it back.
    """
    if steps is None:
        raise ValueError("train_sae needs steps=... (the number of optimiser steps).")
    cfg = TrainConfig.from_dict(
        {"arch": arch, "width": width, "steps": steps, "l1_coefficient": l1_coefficient, "k": k, **options}
    )
    device = resolve_device(device)
    source = as_source(activations)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from.")
    if snapshots and ckpt is None:
        raise ValueError("snapshots are saved in the run's directory: pass checkpoint_dir=... as well.")
    (sae,) = train_runs(source, [cfg], [ckpt], data_seed=cfg.seed, device=device, metadata=metadata, resume=resume,
                        checkpoint_every=checkpoint_every, progress=progress, desc=f"{arch} SAE",
                        heldout=heldout_rows(heldout), snapshots=snapshots)
    return sae
