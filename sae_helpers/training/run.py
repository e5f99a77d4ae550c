"""One SAE's training: :class:`TrainingRun` owns its SAE, optimiser and schedule state and
advances by one optimiser step per :meth:`TrainingRun.step` call, so several runs can share one
pass over the data (:mod:`.loop`). Everything a step depends on is either a pure function of the
step number (data order, schedules) or saved in the checkpoint (parameters, Adam moments,
dead-latent counters, resampling RNG), which makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..data.sources import as_source
from ..distributed import (
    SINGLE,
    World,
    all_max,
    all_mean_,
    over_batch_group,
)
from ..reproducibility import default_device, resolve_device  # noqa: F401 (re-exported for sweep)
from ..saes.base import SAE, batch_variance
from ..saes.initial import NEAR_INITIAL_LIMIT, initial_rows, near_initial_fraction
from ..saes.provenance import Provenance
from .checkpoint import (
    STATE_FILE,
)
from .config import HELDOUT_ROWS, TrainConfig
from .init import activation_scale, build_training_sae, initial_b_dec
from .plateau import plateau_check
from .resampling import resample_dead_latents
from .schedules import constant_from, lr_multiplier, sparsity_multiplier


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
    ``cfg.evaluation_interval`` steps (``heldout_fvu``, ``heldout_l0`` in the log, beside
    ``near_initial_fraction``, the share of decoder rows still near their random start) and, with
    ``cfg.plateau_tolerance``, finishes at the first evaluation where the held-out curves have
    plateaued (:func:`~.plateau.plateau_check`) and at most :data:`NEAR_INITIAL_LIMIT` of the
    latents are near their start: a run whose error and L0 are flat while part of its dictionary
    has not moved is not finished (those latents can still be found by the data).
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
        self._initial_rows: Tensor | None = None  # the decoder's random start, drawn when first needed
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
        return {"heldout_fvu": float(squared / variance), "heldout_l0": float(active) / n,
                "near_initial_fraction": near_initial_fraction(self.sae.W_dec, self.initial_rows())}

    def initial_rows(self) -> Tensor:
        """The decoder rows this run started from (float64, CPU; redrawn from ``cfg.seed``)."""
        if self._initial_rows is None:
            self._initial_rows = initial_rows(self.cfg.width, self.sae.d_in, self.cfg.seed, self.cfg.dtype)
        return self._initial_rows

    def stops_now(self, record: dict[str, Any]) -> bool:
        """Whether an evaluated log ``record`` ends the run: plateaued held-out curves at constant
        learning rate and at most :data:`NEAR_INITIAL_LIMIT` of the latents near their start."""
        return (self.cfg.plateau_tolerance is not None and record["near_initial_fraction"] <= NEAR_INITIAL_LIMIT
                and self.plateau().plateaued)

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
        if evaluates and self.stops_now(record):
            self.plateau_step = self.step_count
        return record

    def final_sae(self) -> SAE:
        """A copy of the SAE with the activation scale folded in (takes raw activations)."""
        sae = copy.deepcopy(self.sae)
        sae.fold_activation_scale_(self.scale)
        sae = sae.for_inference()
        sae.provenance = Provenance({**self.cfg.to_dict(), "world_size": self.world.size}, list(self.log))
        return sae


