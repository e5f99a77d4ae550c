"""The contract every SAE architecture follows.

An SAE maps activations ``x`` (``[..., d_in]``) to latents (``[..., d_sae]``) and
back. Parameters use the SAELens v6 names and shapes (``W_enc [d_in, d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``), so saving needs no renaming.

Subclasses implement :meth:`SAE.encode` and :meth:`SAE.forward` and declare three
small class attributes that let generic code (training, resampling, folding,
stitching) treat every architecture alike:

``latent_axes``
    parameter name -> the axis of that parameter that indexes latents.
``bias_like``
    parameters measured in activation units; they are divided by ``s`` when an SAE
    trained on ``s * x`` is folded back to work on raw ``x``.
``reset_on_resample``
    per-latent parameters set to zero when a dead latent is re-initialised.

and, where they differ from the defaults, how training treats them:

``hyperparameters``
    constructor arguments that define the function (``k`` for TopK); saved in
    ``cfg.json`` and passed back when loading.
``sparsity_option``
    the :class:`~sae_helpers.training.TrainConfig` field that weights the ``sparsity``
    loss term (``"l1_coefficient"``, ``"l0_coefficient"``), or ``None`` when sparsity is
    set by the architecture itself (TopK's ``k``).
``training_options``
    the options a :class:`~sae_helpers.training.TrainConfig` may pass to the training
    module in ``sae_options``, each with its type (``int`` or ``float``; ``None`` allowed where
    the constructor allows it): checked when the configuration is made, so a misspelt or
    mistyped option fails at once, naming the architecture's options.
``uses_dead_mask``
    the training forward takes ``dead_mask`` (latents that have not fired for a while),
    e.g. for TopK's auxiliary loss.
``resamples_by_default``
    whether dead latents are resampled unless the configuration says otherwise.

and, for moving latents between SAEs (:mod:`sae_helpers.stitching`):

``encoder_biases``
    the per-latent biases added to the encoder projection, each with the name of the
    per-latent log-scale of the encoder column it sees (``None``: scale 1); a latent moved
    to an SAE with another ``b_dec`` gets these corrected so its activation is unchanged.
``coupled_latents``
    why one latent cannot be moved alone (TopK: per-token selection couples them), or
    ``None`` when it can.

An architecture whose training parametrisation differs from its saved one (JumpReLU
trains log-thresholds; BatchTopK saves as JumpReLU) overrides :meth:`SAE.for_training`
and :meth:`SAE.for_inference`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from .._dtypes import resolve_dtype
from ..distributed import all_sum, batch_group
from .provenance import Provenance


class SAEOutput(NamedTuple):
    """What ``sae(x)`` returns.

    ``losses`` holds the named, *unweighted* loss terms, each a scalar averaged over
    the batch: ``reconstruction`` (``||x - x_hat||^2`` summed over dimensions),
    ``sparsity`` (the penalty the sparsity coefficient multiplies) and, where the
    architecture has one, ``auxiliary`` (added with weight one).
    """

    latents: Tensor
    reconstruction: Tensor
    losses: dict[str, Tensor]


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean over the batch of ``||x - x_hat||^2`` (summed over the last dimension)."""
    return (x - x_hat).pow(2).sum(-1).mean()


def batch_variance(x: Tensor) -> Tensor:
    """Mean over the batch of ``||x - mean(x)||^2`` (accumulated in at least float32); over the
    whole batch when it is split between processes (:func:`~sae_helpers.distributed.batch_group`)."""
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    world = batch_group()
    if not world.distributed:
        return (x - x.mean(0)).pow(2).sum(-1).mean()
    n = x.shape[0] * world.size  # every process holds the same number of rows
    mean = all_sum(x.sum(0), world) / n
    return all_sum((x - mean).pow(2).sum(), world) / n


def _device_memory(device: str | torch.device | None) -> int | None:
    """Bytes of memory of ``device`` (the machine's RAM for the CPU), ``None`` when unknown or meta."""
    import os

    device = torch.device(device) if device is not None else torch.get_default_device()
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    return None


def _check_fits(d_in: int, d_sae: int, dtype: torch.dtype, device: str | torch.device | None) -> None:
    """Refuse, before allocating, an SAE whose encoder and decoder alone exceed the device's memory."""
    needed = 2 * d_in * d_sae * torch.empty(0, dtype=dtype).element_size()
    memory = _device_memory(device)
    if memory is not None and needed > memory:
        raise ValueError(f"An SAE with d_in={d_in} and d_sae={d_sae} needs {needed / 2**30:,.1f} GiB for its encoder "
                         f"and decoder ({dtype}), more than the {memory / 2**30:,.1f} GiB of this device. Choose a "
                         "smaller d_sae (the number of latents).")



def uniform_rows(d_sae: int, d_in: int, generator: torch.Generator | None = None) -> Tensor:
    """``[d_sae, d_in]`` float32 rows drawn uniformly from ``[-sqrt(6/d_in), sqrt(6/d_in)]`` on the CPU
    (the decoder's initial draw, before its rows are scaled to unit norm)."""
    rows = torch.empty(d_sae, d_in, dtype=torch.float32, device="cpu")
    bound = math.sqrt(6.0 / d_in)
    return rows.uniform_(-bound, bound, generator=generator)

class SAE(nn.Module, ABC):
    """Base class: decoder, bias handling, constraints, folding, resampling, saving."""

    architecture: ClassVar[str]
    saelens_architecture: ClassVar[str]
    trainable: ClassVar[bool] = True
    latent_axes: ClassVar[dict[str, int]]
    bias_like: ClassVar[tuple[str, ...]]
    reset_on_resample: ClassVar[tuple[str, ...]]
    hyperparameters: ClassVar[tuple[str, ...]] = ()
    sparsity_option: ClassVar[str | None] = "l1_coefficient"
    training_options: ClassVar[dict[str, type]] = {}
    uses_dead_mask: ClassVar[bool] = False
    resamples_by_default: ClassVar[bool] = True
    encoder_biases: ClassVar[dict[str, str | None]] = {"b_enc": None}
    coupled_latents: ClassVar[str | None] = None

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_sae", d_sae)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"{name} must be a positive integer, got {value!r}. "
                    "Pass the activation width as d_in and the number of latents as d_sae."
                )
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"metadata must be a dict (e.g. {{'model_name': ..., 'hook_name': ...}}), got "
                             f"{type(metadata).__name__} {metadata!r}.")
        self.d_in = d_in
        self.d_sae = d_sae
        self.metadata: dict[str, Any] = dict(metadata or {})
        #: How it was trained (set by training, kept by conversions, saved and loaded); ``None``: unknown.
        self.provenance: Provenance | None = None
        factory = {"dtype": resolve_dtype(dtype), "device": device}
        _check_fits(d_in, d_sae, factory["dtype"], device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **factory))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **factory))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **factory))

    # ----------------------------------------------------------------- the contract
    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``x [..., d_in]``."""

    @abstractmethod
    def forward(self, x: Tensor) -> SAEOutput:
        """Latents, reconstruction and the named training loss terms for a batch."""

    def decode(self, latents: Tensor) -> Tensor:
        """Reconstruction ``latents @ W_dec + b_dec``."""
        return latents @ self.W_dec + self.b_dec

    @classmethod
    def for_training(cls, d_in: int, d_sae: int, **kwargs: Any) -> SAE:
        """The module trained for this architecture (by default the class itself)."""
        return cls(d_in, d_sae, **kwargs)

    def for_inference(self) -> SAE:
        """The SAE as saved and used after training (by default ``self``)."""
        return self

    def lr_scales(self) -> dict[str, float]:
        """Per-parameter multipliers of the learning rate (default: none)."""
        return {}

    def hyperparameter_values(self) -> dict[str, Any]:
        """``{name: value}`` of :attr:`hyperparameters` (written to ``cfg.json``)."""
        return {name: getattr(self, name) for name in self.hyperparameters}

    # ----------------------------------------------------------------- shared pieces
    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def project(self, x: Tensor) -> Tensor:
        """``(x - b_dec) @ W_enc``, the one encoder matmul, as ``x @ W_enc - b_dec @ W_enc``.

        Written this way the gradient to ``b_dec`` through the encoder costs a
        vector-matrix product instead of a second ``[batch, d_sae] x [d_sae, d_in]``
        matmul.
        """
        self.check_input(x)
        # In place on the fresh matmul result (mm does not keep its output for backward), and
        # as an add of the negated [d_sae] vector, whose backward needs no negated copy of the
        # [batch, d_sae] gradient: the same values as ``x @ W_enc - b_dec @ W_enc``.
        return (x @ self.W_enc).add_(-(self.b_dec @ self.W_enc))

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error if ``x`` does not fit this SAE."""
        if not isinstance(x, Tensor):
            raise TypeError(f"SAE input must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(
                f"Activation width mismatch: this SAE expects inputs of width d_in={self.d_in}, "
                f"got a tensor of shape {tuple(x.shape)}. Use an SAE trained on this site, "
                "or harvest activations from the site the SAE was trained on."
            )

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> SAE:
        """Random unit-norm decoder rows; the encoder starts as the decoder's transpose."""
        self.W_dec.copy_(uniform_rows(self.d_sae, self.d_in, generator))
        self.normalize_decoder_()
        self.W_enc.copy_(self.W_dec.T)
        for name, param in self.named_parameters():
            if name not in ("W_enc", "W_dec"):
                param.zero_()
        return self

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm (after each optimiser step)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Project out of ``W_dec.grad`` the component parallel to each decoder row."""
        grad = self.W_dec.grad
        if grad is None:
            return
        rows = self.W_dec
        parallel = torch.linalg.vecdot(grad, rows) / torch.linalg.vecdot(rows, rows).clamp_min(1e-12)
        grad.addcmul_(parallel.unsqueeze(1), rows, value=-1)  # in place, no [d_sae, d_in] temporary

    @torch.no_grad()
    def fold_activation_scale_(self, scale: float) -> None:
        """Turn an SAE trained on ``scale * x`` into one that takes raw ``x``.

        Every architecture here is positively homogeneous in its activation-unit
        parameters, so dividing those (``bias_like``) by ``scale`` gives
        ``sae_raw(x) = sae_scaled(scale * x) / scale`` with unit-norm decoder rows kept.
        """
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"Activation scale must be a positive finite number, got {scale}.")
        for name in self.bias_like:
            getattr(self, name).div_(scale)

    @torch.no_grad()
    def reinitialize_latents_(self, latents: Tensor, directions: Tensor, encoder_norm: float) -> None:
        """Point dead ``latents`` at ``directions`` (unit rows): decoder rows become the
        directions, encoder columns the directions times ``encoder_norm``, and the
        parameters in ``reset_on_resample`` go to zero."""
        directions = directions.to(self.W_dec)
        self.W_dec[latents] = directions
        self.W_enc[:, latents] = directions.T * encoder_norm
        for name in self.reset_on_resample:
            getattr(self, name)[latents] = 0.0

    def select_latents(self, latents: Sequence[int] | Tensor) -> dict[str, Tensor]:
        """The per-latent slices of every parameter (for stitching and inspection)."""
        index = torch.as_tensor(latents, dtype=torch.long, device=self.device)
        return {
            name: getattr(self, name).detach().index_select(axis, index)
            for name, axis in self.latent_axes.items()
        }

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.hyperparameter_values().items())
        return f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}{extra}"

    # ----------------------------------------------------------------- provenance
    @property
    def training_config(self) -> dict[str, Any] | None:
        """The training configuration of :attr:`provenance` (a ``TrainConfig`` dict), ``None`` when unknown."""
        return None if self.provenance is None else self.provenance.config

    @training_config.setter
    def training_config(self, config: dict[str, Any] | None) -> None:
        self.provenance = Provenance(config, [] if self.provenance is None else self.provenance.log)

    @property
    def training_log(self) -> list[dict[str, Any]] | None:
        """The training log of :attr:`provenance` (one dict per logging step), ``None`` when unknown."""
        return None if self.provenance is None else self.provenance.log

    @training_log.setter
    def training_log(self, log: list[dict[str, Any]]) -> None:
        self.provenance = Provenance(None if self.provenance is None else self.provenance.config, list(log))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str, **extra_json: Any) -> str:
        """Save in the SAELens v6 layout (``cfg.json`` + ``sae_weights.safetensors``) with
        :func:`sae_helpers.formats.save_sae`, which also writes the :attr:`provenance`.

        Keyword arguments are written as further JSON files beside them, e.g.
        ``sae.save(path, notes={...})`` writes ``notes.json``.
        """
        from ..formats import save_sae  # formats imports the SAE classes, not the other way round

        return str(save_sae(self, path, **extra_json))
