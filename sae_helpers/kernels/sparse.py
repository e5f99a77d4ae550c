"""Sparse decoder kernels: products with an ``[N, M]`` latent matrix that is zero off a support.

An SAE's latents ``f [N, M]`` have ``L0`` (mean active latents per row) far below the
width ``M`` once training has made them sparse. The decoder's three products then cost
``O(nnz * d)`` instead of the dense ``O(N * M * d)``:

========================  ==============================  ===================================
product                   function                        kernel
========================  ==============================  ===================================
``S @ W``  ([N, d])       :func:`spmm`                    ``F.embedding_bag`` (CSR order)
``(G @ W^T)`` at support  :func:`sampled_mm`              ``torch.sparse.sampled_addmm``
``S^T @ G``  ([M, d])     :func:`spmm_t`                  ``F.embedding_bag`` (CSC order)
========================  ==============================  ===================================

``S`` is the matrix with ``values`` on a :class:`Support` and zeros elsewhere. None of
them materialises more than ``[nnz]`` values; the column-major order for :func:`spmm_t`
costs one stable sort of the ``nnz`` column indices, cached on the support. How they were
chosen, and the measured crossover with the dense decoder: ``bench/sparse_decoder.py``.

API
---
:class:`Support`
    Where the nonzeros are (row-major, like CSR): ``Support.from_dense(t)``,
    ``Support.from_indices(indices, M)`` (fixed ``k`` per row: TopK) or
    ``Support.from_flat(flat, shape)``; ``support.gather(t)`` reads a dense ``[N, M]``
    tensor at it, ``support.to_dense(values)`` scatters back. The one sparse-latent type of
    the package: TopK and BatchTopK selections are a support and its ``[nnz]`` values.
:func:`spmm`, :func:`sampled_mm`, :func:`spmm_t`, :func:`column_sums`
    The kernels (no autograd; call them from hand-written backwards).
:func:`sparse_decode` / :func:`decode_support` / :func:`embedding_decode`
    ``x_hat = S @ W_dec + b_dec`` with autograd to the values, ``W_dec`` and ``b_dec``:
    ``sparse_decode(indices [..., k], values [..., k], W_dec, b_dec)`` for fixed-k
    latents, ``decode_support(support, values [nnz], W_dec, b_dec)`` for any support (both
    with the backward by :func:`sampled_mm` and :func:`spmm_t`), and
    ``embedding_decode(support, values, W_dec, b_dec)`` with ATen's embedding-bag backward
    (the TopK SAEs' decoder).
:func:`use_sparse`, :class:`SupportCollector`
    The decoder path of the fused training steps (:mod:`.relu`, :mod:`.gated`), passed per
    call as ``decoder``: ``"dense"``, ``"sparse"`` or ``"auto"`` (sparse when the batch's
    density ``nnz / (N * M)`` is at most :data:`DENSITY_CROSSOVER` and the problem is not
    tiny, :data:`MIN_SPARSE_MACS`). The collector counts, and collects, the support block
    by block during the steps' row-blocked elementwise pass and makes that choice.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "DENSITY_CROSSOVER",
    "MIN_SPARSE_MACS",
    "Support",
    "SupportCollector",
    "column_sums",
    "DECODER_PATHS",
    "decode_support",
    "embedding_decode",
    "sampled_mm",
    "sparse_decode",
    "sparse_decode_and_error",
    "spmm",
    "spmm_t",
    "use_sparse",
]

#: The automatic choice takes the sparse decoder when at most this fraction of the batch's
#: latents is active (gate open, for Gated SAEs), i.e. L0 <= DENSITY_CROSSOVER * d_sae: about
#: where the two paths cost the same (``bench/sparse_decoder.py``, results in bench/README.md),
#: so near it the choice matters little either way.
DENSITY_CROSSOVER = 0.15

#: ... and only when one dense decoder product, ``N * M * d_in`` multiply-adds, is at least
#: this much work: below it the sparse path's fixed costs (index building, more, smaller
#: kernels) outweigh the savings (``bench/sparse_decoder.py``).
MIN_SPARSE_MACS = 1 << 22

#: The values of the ``decoder`` argument of the fused training steps.
DECODER_PATHS = ("auto", "dense", "sparse")


def check_decoder_path(decoder: str) -> str:
    """``decoder`` if it is one of :data:`DECODER_PATHS`, else a ``ValueError``."""
    if decoder not in DECODER_PATHS:
        raise ValueError(f"Unknown decoder path {decoder!r}: use one of {DECODER_PATHS}.")
    return decoder


def use_sparse(
    nnz: int, shape: tuple[int, int], d: int, device: torch.device | str = "cpu", decoder: str = "auto"
) -> bool:
    """Whether decoder path ``decoder`` picks the sparse decoder for an ``[N, M] x [M, d]``
    product whose left factor has ``nnz`` nonzeros.

    ``"auto"`` picks it on CPU when ``nnz <= DENSITY_CROSSOVER * N * M`` and
    ``N * M * d >= MIN_SPARSE_MACS``. On other devices ``"auto"`` stays dense (the
    crossover has only been measured on CPU); force ``"sparse"`` there to use it.
    """
    if check_decoder_path(decoder) != "auto":
        return decoder == "sparse"
    return _auto_may_be_sparse(shape, d, device) and nnz <= DENSITY_CROSSOVER * shape[0] * shape[1]


def _auto_may_be_sparse(shape: tuple[int, int], d: int, device: torch.device | str) -> bool:
    numel = shape[0] * shape[1]
    return torch.device(device).type == "cpu" and numel > 0 and numel * d >= MIN_SPARSE_MACS


# ------------------------------------------------------------------------------ support
class Support:
    """The positions of the nonzeros of an ``[N, M]`` matrix, in row-major (CSR) order.

    Built with :meth:`from_dense`, :meth:`from_indices` or :meth:`from_flat`. Index
    tensors (``crow [N + 1]``, ``cols [nnz]``, ``rows [nnz]``, ``flat [nnz] = rows * M +
    cols``; all ``int64``) and the column-major order used by :func:`spmm_t` are computed
    on first use and cached. Values on a support are ``[nnz]`` tensors in this order.
    """

    def __init__(self, shape: tuple[int, int], device: torch.device, **indices: Tensor) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.device = torch.device(device)
        for name, value in indices.items():
            if name not in ("flat", "crow", "cols", "rows"):
                raise TypeError(f"Unknown index {name!r}.")
            self.__dict__[name] = value  # fills the cached_property

    @classmethod
    def from_flat(cls, flat: Tensor, shape: tuple[int, int]) -> Support:
        """From sorted flat indices ``row * M + col`` of the nonzeros."""
        return cls(shape, flat.device, flat=flat.long())

    @classmethod
    def from_dense(cls, t: Tensor) -> Support:
        """The nonzeros of a 2-D tensor ``t``."""
        if t.ndim != 2:
            raise ValueError(f"Expected a 2-D tensor, got shape {tuple(t.shape)}.")
        return cls.from_flat(t.reshape(-1).nonzero().squeeze(1), tuple(t.shape))

    @classmethod
    def from_indices(cls, indices: Tensor, num_cols: int) -> Support:
        """``k`` positions per row, ``indices [N, k]`` (any order; duplicates add up)."""
        if indices.ndim != 2:
            raise ValueError(f"Expected indices of shape [N, k], got {tuple(indices.shape)}.")
        n, k = indices.shape
        crow = torch.arange(n + 1, device=indices.device) * k
        return cls((n, num_cols), indices.device, crow=crow, cols=indices.reshape(-1).long())

    # ------------------------------------------------------------ lazily computed indices
    @property
    def nnz(self) -> int:
        return self.cols.numel()

    @property
    def density(self) -> float:
        """``nnz / (N * M)``."""
        return self.nnz / max(1, self.shape[0] * self.shape[1])

    @cached_property
    def flat(self) -> Tensor:
        return self.rows * self.shape[1] + self.cols

    @cached_property
    def cols(self) -> Tensor:
        return torch.remainder(self.flat, self.shape[1])

    @cached_property
    def crow(self) -> Tensor:
        if "flat" in self.__dict__:
            bounds = torch.arange(self.shape[0] + 1, device=self.device) * self.shape[1]
            return torch.searchsorted(self.flat, bounds)
        counts = torch.bincount(self.rows, minlength=self.shape[0])
        return torch.cat([counts.new_zeros(1), counts.cumsum(0)])

    @cached_property
    def rows(self) -> Tensor:
        if "flat" in self.__dict__:
            return torch.div(self.flat, self.shape[1], rounding_mode="floor")
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), self.crow.diff(),
                                       output_size=self.nnz)

    @cached_property
    def by_column(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(order, ccol, rows_by_col)``: the permutation to column-major order (stable),
        the column offsets ``[M + 1]`` and the rows in that order (a CSC of the pattern)."""
        m = self.shape[1]
        key = self.cols.int() if m < 2**31 else self.cols  # int32 keys sort several times faster
        order = torch.sort(key, stable=True).indices
        counts = torch.bincount(self.cols, minlength=m)
        ccol = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return order, ccol, self.rows.index_select(0, order)

    def gather(self, t: Tensor) -> Tensor:
        """The ``[nnz]`` values of a dense ``[N, M]`` tensor ``t`` at the support."""
        if t.is_contiguous():
            return t.reshape(-1).index_select(0, self.flat)
        return t[self.rows, self.cols]

    def to_dense(self, values: Tensor) -> Tensor:
        """The dense ``[N, M]`` matrix with ``values`` on the support (duplicates add up)."""
        out = values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_add_(0, self.flat, values).view(self.shape)

    def csr(self, values: Tensor) -> Tensor:
        """A ``torch.sparse_csr_tensor`` of ``values`` on the support."""
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, values, self.shape)

    def __repr__(self) -> str:
        return f"Support(shape={self.shape}, nnz={self.nnz}, density={self.density:.4g})"


# ------------------------------------------------------------------------------ kernels
def spmm(support: Support, values: Tensor, weight: Tensor) -> Tensor:
    """``S @ weight`` for the sparse ``S [N, M]`` with ``values`` on ``support``.

    Parameters
    ----------
    support : the nonzero positions of ``S``.
    values : ``[nnz]`` values of ``S`` (same dtype as ``weight``).
    weight : ``[M, d]`` (e.g. ``W_dec``).

    Returns
    -------
    Tensor
        ``[N, d]``.
    """
    return F.embedding_bag(
        support.cols, weight, support.crow, mode="sum", per_sample_weights=values.reshape(-1),
        include_last_offset=True,
    )


def sampled_mm(support: Support, grad: Tensor, weight: Tensor) -> Tensor:
    """``(grad @ weight.T)`` at the support only: ``out[e] = grad[row_e] . weight[col_e]``.

    Parameters
    ----------
    support : the positions to compute.
    grad : ``[N, d]`` (e.g. ``dL/dx_hat``).
    weight : ``[M, d]`` (e.g. ``W_dec``).

    Returns
    -------
    Tensor
        ``[nnz]``, in the support's order. 16-bit inputs are computed in float32.
    """
    dtype = grad.dtype
    if support.nnz == 0:
        return grad.new_zeros(0)
    if dtype in (torch.float16, torch.bfloat16):  # sampled_addmm has no 16-bit CPU kernel
        grad, weight = grad.float(), weight.float()
    pattern = support.csr(grad.new_zeros(support.nnz))
    out = torch.sparse.sampled_addmm(pattern, grad, weight.T, beta=0.0).values()
    return out.to(dtype)


def spmm_t(support: Support, values: Tensor, other: Tensor) -> Tensor:
    """``S.T @ other`` for the sparse ``S [N, M]`` with ``values`` on ``support``.

    Parameters
    ----------
    support : the nonzero positions of ``S`` (its column-major order is cached on it).
    values : ``[nnz]`` values of ``S`` (same dtype as ``other``).
    other : ``[N, d]`` (e.g. ``dL/dx_hat`` for ``dL/dW_dec``, or ``x - b_dec`` for
        ``dL/dW_enc``, transposed).

    Returns
    -------
    Tensor
        ``[M, d]``.
    """
    order, ccol, rows_by_col = support.by_column
    return F.embedding_bag(
        rows_by_col, other, ccol, mode="sum", per_sample_weights=values.reshape(-1).index_select(0, order),
        include_last_offset=True,
    )


def column_sums(support: Support, values: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``S.sum(0)`` (``[M]``), accumulated in ``dtype`` (default: ``values``' dtype)."""
    dtype = dtype or values.dtype
    out = torch.zeros(support.shape[1], dtype=dtype, device=values.device)
    return out.index_add_(0, support.cols, values.reshape(-1).to(dtype))


# ------------------------------------------------------------------------------ autograd
class _DecodeSupport(torch.autograd.Function):
    """``x_hat = S @ W_dec (+ b_dec)``; backward with :func:`sampled_mm` and :func:`spmm_t`."""

    @staticmethod
    def forward(ctx: Any, support: Support, values: Tensor, W_dec: Tensor, b_dec: Tensor | None) -> Tensor:
        out = spmm(support, values, W_dec)
        if b_dec is not None:
            out.add_(b_dec)
        ctx.support = support
        ctx.values_shape = values.shape
        ctx.save_for_backward(values, W_dec)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, W_dec = ctx.saved_tensors
        support = ctx.support
        grad = grad.contiguous()
        needs = ctx.needs_input_grad
        return (
            None,
            sampled_mm(support, grad, W_dec).reshape(ctx.values_shape) if needs[1] else None,
            spmm_t(support, values, grad) if needs[2] else None,
            grad.sum(0) if needs[3] else None,
        )


def decode_support(support: Support, values: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """``x_hat = S @ W_dec + b_dec`` for ``S`` with ``values [nnz]`` on ``support``.

    Differentiable in ``values``, ``W_dec`` and ``b_dec`` (gradients by :func:`sampled_mm`,
    :func:`spmm_t` and a sum): the same values and gradients as the dense
    ``support.to_dense(values) @ W_dec + b_dec``, in ``O(nnz * d)``.

    Returns
    -------
    Tensor
        ``[N, d]``.
    """
    if values.shape[-1:] != (support.nnz,) or values.ndim != 1:
        raise ValueError(f"Expected values of shape [{support.nnz}], got {tuple(values.shape)}.")
    return _DecodeSupport.apply(support, values, W_dec, b_dec)


def sparse_decode(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """``x_hat = sum_j values[..., j] W_dec[indices[..., j]] + b_dec`` (fixed ``k`` per row).

    For TopK-style latents given as ``(indices, values)``: the same as scattering ``values``
    into a dense ``[..., d_sae]`` tensor and decoding it, in ``O(k d)`` per row.

    Parameters
    ----------
    indices : ``[..., k]`` long, latent indices (any order within a row).
    values : ``[..., k]``, their activations (differentiable).
    W_dec : ``[d_sae, d_in]`` (differentiable).
    b_dec : ``[d_in]`` or ``None`` (differentiable).

    Returns
    -------
    Tensor
        ``[..., d_in]``.
    """
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} differ in shape.")
    lead, k = indices.shape[:-1], indices.shape[-1]
    support = Support.from_indices(indices.reshape(lead.numel(), k), W_dec.shape[0])
    x_hat = _DecodeSupport.apply(support, values.reshape(-1), W_dec, b_dec)
    return x_hat.reshape(*lead, W_dec.shape[1])


def embedding_decode(support: Support, values: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """``x_hat = S @ W_dec (+ b_dec)`` for ``S`` with ``values [nnz]`` on ``support``, one
    ``F.embedding_bag`` with autograd's own backward (the TopK SAEs' decoder).

    The same values as :func:`decode_support`; the gradients come from ATen's
    embedding-bag backward instead of :func:`sampled_mm` and :func:`spmm_t`.
    """
    out = F.embedding_bag(support.cols, W_dec, support.crow[:-1], mode="sum", per_sample_weights=values)
    return out if b_dec is None else out + b_dec


# ------------------------------------------------------------------------------ collection
class SupportCollector:
    """Chooses, by decoder path ``decoder`` (see :func:`use_sparse`), dense vs sparse for a
    row-blocked pass over ``t [N, M]`` (to be multiplied by an ``[M, d]`` matrix) and collects
    the support.

    Call :meth:`add` with each row block right after writing ``t[rows]`` (while it is in
    cache), then :meth:`finish`: the :class:`Support` of ``t`` (its nonzeros) when the
    sparse path is chosen, else ``None``. Under ``"auto"`` the nonzeros are collected while
    the running density is at most :data:`DENSITY_CROSSOVER`, then only counted, until the
    count alone decides for dense; if the batch turns out sparse after all, the rest are
    collected in :meth:`finish`. Under ``"dense"`` it does nothing.
    """

    def __init__(self, t: Tensor, d: int, decoder: str = "auto") -> None:
        self.t = t
        self.d = d  # the width of the matrix t multiplies
        self.path = check_decoder_path(decoder)
        if self.path == "auto" and not _auto_may_be_sparse(tuple(t.shape), d, t.device):
            self.path = "dense"  # see use_sparse
        self.pieces: list[Tensor] = []
        self.collected_rows = 0  # the nonzeros of t[:collected_rows] are in self.pieces
        self.nnz = 0
        self.active = self.path != "dense"
        self.collecting = self.active
        self.limit = DENSITY_CROSSOVER * t.numel()  # "auto": more nonzeros than this -> dense

    def add(self, rows: slice, mask: Tensor | None = None) -> None:
        """Record the nonzeros of ``t[rows]`` (blocks in order, from row 0).

        ``mask``, if given, is ``1.0`` where ``t[rows]`` is nonzero and ``0.0`` elsewhere (a
        mask the caller has anyway): counting by its sum is faster than ``count_nonzero``.
        """
        if not self.active:
            return
        block = self.t[rows]
        if self.collecting:
            flat = block.reshape(-1).nonzero().squeeze(1)
            self.pieces.append(flat.add_(rows.start * self.t.shape[1]))
            self.collected_rows = rows.stop
            self.nnz += flat.numel()
            if self.path == "auto" and self.nnz > DENSITY_CROSSOVER * rows.stop * self.t.shape[1]:
                self.collecting = False
        else:
            self.nnz += int(torch.count_nonzero(block) if mask is None else mask.sum(dtype=torch.float64))
        if self.path == "auto" and self.nnz > self.limit:  # decided: dense
            self.active, self.pieces = False, []

    def finish(self) -> Support | None:
        """The support if the sparse path is chosen, else ``None``."""
        if not self.active or not use_sparse(self.nnz, tuple(self.t.shape), self.d, self.t.device, self.path):
            return None
        n, m = self.t.shape
        if self.collected_rows < n:
            rest = self.t[self.collected_rows:].reshape(-1).nonzero().squeeze(1)
            self.pieces.append(rest.add_(self.collected_rows * m))
        flat = torch.cat(self.pieces) if self.pieces else self.t.new_zeros(0, dtype=torch.long)
        self.pieces = []
        return Support.from_flat(flat, (n, m))


def sparse_decode_and_error(
    support: Support, values: Tensor, W_dec: Tensor, b_dec: Tensor, x: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The sparse counterpart of :func:`~sae_helpers.kernels.blocks.decode_and_error`:
    ``(x_hat, x_hat - x, mean ||x - x_hat||^2)`` with ``x_hat = S @ W_dec + b_dec``."""
    x_hat = spmm(support, values, W_dec).add_(b_dec)
    error = x_hat - x
    return x_hat, error, error.pow(2).sum(-1).mean()
