"""Sparse kernels for BatchTopK training: only the ``k*B`` active entries are touched.

A BatchTopK step keeps ``k*B`` of the ``B*d_sae`` pre-activations. Written densely, every
matrix product after the encoder (decode, its backward, the encoder's backward) costs as much
as the encoder itself, though almost all its inputs are zero. Here the active entries are kept
as (row, col, value) triples and those products are computed from them, so everything but the
encoder's forward matmul costs ``O(k*B*d_in)`` instead of ``O(B*d_sae*d_in)``.

Three primitives, each a segmented sum or a sampled dot product (``n`` entries with a row
index, a column index and a weight):

- ``sum_rows_by_row``:   out[r] = sum over entries in row r of  w * table[col]
- ``sum_rows_by_col``:   out[c] = sum over entries in col c of  w * table[row]
- ``sampled_dot``:       out[e] = left[row_e] . right[col_e]

The dense path (``msae.kernels.prefix_mse.cumulative_prefix_mse`` on a dense ``acts``) stays the
reference: the tests check both give the same losses and gradients.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..distributed import top_k_cutoff, world_size


class ActiveLatents(NamedTuple):
    """The non-zero pattern of a (B, d_sae) activation matrix, in row-major order:
    ``dense[rows[e], cols[e]] = values[e]``.

    Attributes:
        rows: (n,) long, the row (token) of each entry; non-decreasing.
        cols: (n,) long, the column (latent) of each entry; increasing within a row.
        values: (n,) the activations.
        shape: (B, d_sae), the shape of the dense matrix.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    def to_dense(self) -> torch.Tensor:
        dense = self.values.new_zeros(self.shape)
        dense[self.rows, self.cols] = self.values
        return dense


# --- exact BatchTopK ---------------------------------------------------------------------------


def batch_top_k_indices(pre: torch.Tensor, k: int, group=None) -> torch.Tensor:
    """Flat indices (sorted) of the ``k*B`` largest entries of the (B, d_sae) matrix ``pre``.

    With a process ``group`` (data-parallel training, :mod:`msae.distributed`), ``pre`` is this
    rank's rows of a batch spread over the group, and the selection is over the whole batch:
    the entries of these rows among its ``k * B * world_size`` largest (ties at the cut-off are
    all kept).

    Exactly the entries ``pre.flatten().topk(k*B)`` selects (up to the choice among ties at the
    cut-off, which ``topk`` leaves unspecified too). On a CPU a full top-k over ``B*d_sae``
    entries is slow, so a threshold below the cut-off is estimated from a strided sample, the
    entries above it are gathered, and the top-k is taken over those; if fewer than ``k*B``
    pass (the sample misjudged), it falls back to the full top-k. On a GPU, where top-k is fast
    and the fallback test would stall the device, it is the full top-k.
    """
    flat = pre.flatten()
    if group is not None:
        cutoff = top_k_cutoff(flat, k * pre.shape[0] * world_size(group), group)
        return (flat >= cutoff).nonzero().squeeze(1)
    n_keep = k * pre.shape[0]
    if pre.device.type != "cpu" or n_keep * 8 > flat.numel():
        return flat.topk(n_keep, sorted=False).indices.sort().values
    # A strided sample with ~2,000 entries expected above the cut-off: enough to place the
    # threshold within a few percent. The stride shares no factor with d_sae, so the sample
    # walks through every column.
    stride = _coprime_stride(max(1, n_keep // 2000), pre.shape[1])
    sample = flat[::stride]
    # Aim for ~1.25x the needed entries above the threshold, plus slack for sampling noise.
    expected = n_keep * sample.numel() / flat.numel()
    rank = min(sample.numel(), int(1.25 * expected + 4 * math.sqrt(expected)) + 1)
    threshold = sample.topk(rank, sorted=False).values.min()
    candidates = (flat >= threshold).nonzero().squeeze(1)
    if candidates.numel() < n_keep:
        return flat.topk(n_keep, sorted=False).indices.sort().values
    winners = flat[candidates].topk(n_keep, sorted=False).indices
    return candidates[winners].sort().values


def _coprime_stride(target: int, n: int) -> int:
    """The smallest stride >= target that shares no factor with n."""
    stride = target
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


def batch_top_k(pre: torch.Tensor, k: int, group=None) -> torch.Tensor:
    """Keep the ``k * B`` largest entries of the whole (B, d_sae) batch; zero the rest.

    One global selection, so a token may keep more or fewer than ``k`` latents. ``group``: see
    :func:`batch_top_k_indices`.
    """
    index = batch_top_k_indices(pre, k, group)
    return torch.zeros_like(pre).flatten().scatter(0, index, pre.flatten()[index]).view_as(pre)


def batch_top_k_active(pre: torch.Tensor, k: int, group=None) -> ActiveLatents:
    """The BatchTopK selection of ``ReLU(pre)`` as row-major triples.

    ``pre`` may be given before its ReLU: the ReLU is monotone, so the selection is the same
    up to which zeros fill the places no positive entry takes (they stay zero either way), and
    the pass over the whole (B, d_sae) matrix is saved. ``group``: see :func:`batch_top_k_indices`."""
    index = batch_top_k_indices(pre, k, group)
    d_sae = pre.shape[1]
    return ActiveLatents(index // d_sae, index % d_sae, torch.relu(pre.flatten()[index]), tuple(pre.shape))


# --- primitives ------------------------------------------------------------------------------


def _offsets(sorted_keys: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Start of each segment 0..n_segments-1 in ``sorted_keys`` (empty segments allowed)."""
    return torch.searchsorted(sorted_keys, torch.arange(n_segments, device=sorted_keys.device))


def sum_rows_by_row(rows, cols, weights, table, n_rows: int) -> torch.Tensor:
    """out[r] = sum over entries e with rows[e] == r of weights[e] * table[cols[e]].

    ``rows`` must be sorted. (n_rows, table.shape[1])."""
    return F.embedding_bag(cols, table, _offsets(rows, n_rows), mode="sum", per_sample_weights=weights)


def sum_rows_by_col(rows, cols, weights, table, n_cols: int) -> torch.Tensor:
    """out[c] = sum over entries e with cols[e] == c of weights[e] * table[rows[e]]. (n_cols, d)."""
    order = cols.argsort(stable=True)
    return sum_rows_by_row(cols[order], rows[order], weights[order], table, n_cols)


def sampled_dot(rows, cols, left, right) -> torch.Tensor:
    """out[e] = left[rows[e]] . right[cols[e]]: the entries of ``left @ right.T`` on the pattern.

    ``rows`` must be sorted and ``cols`` increasing within a row. (n,)."""
    n_rows, n_cols = left.shape[0], right.shape[0]
    crow = torch.searchsorted(rows, torch.arange(n_rows + 1, device=rows.device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cols, torch.ones_like(rows, dtype=left.dtype),
                                          size=(n_rows, n_cols), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, left, right.t(), beta=0.0).values()


# --- the encoder, differentiated only at the selected entries -------------------------------


def selected_pre_activations(x_centered, W_enc, b_enc, rows, cols, values) -> torch.Tensor:
    """``values`` (= ReLU(x_centered @ W_enc + b_enc) at (rows, cols), computed by the caller
    without a graph) made differentiable in x_centered, W_enc and b_enc. The backward pass
    touches only those entries instead of multiplying a dense (B, d_sae) gradient."""
    return _SelectedPreActivations.apply(x_centered, W_enc, b_enc, rows, cols, values)


class _SelectedPreActivations(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_centered, W_enc, b_enc, rows, cols, values):
        ctx.save_for_backward(x_centered, W_enc, rows, cols, values)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):
        x_centered, W_enc, rows, cols, values = ctx.saved_tensors
        grad = grad_values * (values > 0)  # ReLU: entries at zero pass no gradient
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_W = grad_b = None
        if need_x:
            grad_x = sum_rows_by_row(rows, cols, grad, W_enc.t().contiguous(), x_centered.shape[0])
        if need_W:
            grad_W = sum_rows_by_col(rows, cols, grad, x_centered, W_enc.shape[1]).t()
        if need_b:
            grad_b = torch.zeros(W_enc.shape[1], dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        return grad_x, grad_W, grad_b, None, None, None


# --- AuxK on a sparse pattern -------------------------------------------------------------


def sparse_decode_error(rows, cols, values, W_dec, target) -> torch.Tensor:
    """``((target - acts @ W_dec) ** 2).sum(-1).mean()`` for the sparse ``acts`` given by
    (rows, cols, values), differentiable in ``values`` and ``W_dec`` (``target`` is a constant)."""
    return _SparseDecodeError.apply(rows, cols, values, W_dec, target)


class _SparseDecodeError(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, values, W_dec, target):
        with torch.autocast(target.device.type, enabled=False):
            error = target - sum_rows_by_row(rows, cols, values, W_dec, target.shape[0])
            ctx.save_for_backward(rows, cols, values, W_dec, error)
            return error.pow(2).sum(-1).mean()

    @staticmethod
    def backward(ctx, grad_out):
        rows, cols, values, W_dec, error = ctx.saved_tensors
        grad_recon = error * (-2.0 / error.shape[0]) * grad_out  # d loss / d (acts @ W_dec)
        grad_values = sampled_dot(rows, cols, grad_recon, W_dec) if ctx.needs_input_grad[2] else None
        grad_W = sum_rows_by_col(rows, cols, values, grad_recon, W_dec.shape[0]) if ctx.needs_input_grad[3] else None
        return None, None, grad_values, grad_W, None


# --- penalty-based SAEs: dense (B, d_sae) tensors, products on their non-zeros ----------------
#
# ReLU-L1, Gated, JumpReLU and P-annealing SAEs have no k: their codes are as sparse as their
# penalty has made them, which is dense early in training and ~L0/d_sae later. These two
# functions keep the usual dense tensors (so each architecture's loss reads as written) and run
# the products after the encoder's forward on the non-zeros when there are few of them, falling
# back to the dense products otherwise. They compute the same values and the same gradients
# wherever the caller's activation function passes any (see each one's contract).

SPARSE_PRODUCTS_MAX_DENSITY = 0.05  # above this fraction of non-zeros the dense products are faster


def _use_sparse_products(mask: torch.Tensor) -> bool:
    # The count is a host sync: only on the CPU, where the products are the cost worth saving.
    return mask.device.type == "cpu" and int(torch.count_nonzero(mask)) <= SPARSE_PRODUCTS_MAX_DENSITY * mask.numel()


def decode_sparse(acts: torch.Tensor, W_dec: torch.Tensor, grad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``acts @ W_dec`` for a mostly-zero (B, d_sae) ``acts``: (B, d_in).

    Contract: the gradient to ``acts`` is computed only at its non-zeros (and where ``grad_mask``,
    a (B, d_sae) bool, is set); elsewhere it is returned as 0. That is exact for any activation
    whose derivative is zero where its output is zero (ReLU, the gate's Heaviside); JumpReLU's
    threshold also reads the gradient just below the threshold, which it passes as ``grad_mask``.
    """
    return _DecodeSparse.apply(acts, W_dec, grad_mask)


class _DecodeSparse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acts, W_dec, grad_mask):
        pattern = acts != 0 if grad_mask is None else (acts != 0) | grad_mask
        ctx.sparse = _use_sparse_products(pattern)
        if not ctx.sparse:
            ctx.save_for_backward(acts, W_dec)
            return acts @ W_dec
        rows, cols = pattern.nonzero(as_tuple=True)  # row-major: rows sorted, cols increasing
        values = acts[rows, cols]
        ctx.save_for_backward(rows, cols, values, W_dec)
        ctx.shape = acts.shape
        return sum_rows_by_row(rows, cols, values, W_dec, acts.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        need_acts, need_W = ctx.needs_input_grad[:2]
        grad_acts = grad_W = None
        if not ctx.sparse:
            acts, W_dec = ctx.saved_tensors
            grad_acts = grad_out @ W_dec.t() if need_acts else None
            grad_W = acts.t() @ grad_out if need_W else None
            return grad_acts, grad_W, None
        rows, cols, values, W_dec = ctx.saved_tensors
        if need_acts:
            grad_acts = grad_out.new_zeros(ctx.shape)
            grad_acts[rows, cols] = sampled_dot(rows, cols, grad_out.contiguous(), W_dec)
        if need_W:
            grad_W = sum_rows_by_col(rows, cols, values, grad_out, W_dec.shape[0])
        return grad_acts, grad_W, None


def encode_sparse_grad(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W_enc + b_enc`` (``b_enc`` optional): (B, d_in) -> (B, d_sae), a dense forward whose
    backward multiplies only the non-zeros of the incoming (B, d_sae) gradient, which after a
    sparse activation are the few active latents. Exact: zeros contribute nothing to either product."""
    return _EncodeSparseGrad.apply(x, W_enc, b_enc)


class _EncodeSparseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc):
        ctx.save_for_backward(x, W_enc)
        return x @ W_enc if b_enc is None else torch.addmm(b_enc, x, W_enc)

    @staticmethod
    def backward(ctx, grad_out):
        x, W_enc = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad
        nonzero = grad_out != 0
        if not _use_sparse_products(nonzero):
            grad_x = grad_out @ W_enc.t() if need_x else None
            grad_W = x.t() @ grad_out if need_W else None
            return grad_x, grad_W, grad_out.sum(0) if need_b else None
        rows, cols = nonzero.nonzero(as_tuple=True)
        grad = grad_out[rows, cols]
        # (a column sum of the dense gradient costs more than the products here)
        grad_b = grad.new_zeros(W_enc.shape[1]).index_add_(0, cols, grad) if need_b else None
        grad_x = sum_rows_by_row(rows, cols, grad, W_enc.t().contiguous(), x.shape[0]) if need_x else None
        grad_W = sum_rows_by_col(rows, cols, grad, x, W_enc.shape[1]).t() if need_W else None
        return grad_x, grad_W, grad_b
