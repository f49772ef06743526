"""The reconstruction error of every Matryoshka prefix in one pass over the decoder.

Definition (what this computes, and what the tests check it against in float64)::

    x_hat_i = acts[:, :m_i] @ W_dec[:m_i] + b_dec              for each prefix end m_i
    mse_i   = ((x - x_hat_i) ** 2).sum(-1).mean()

Decoding each prefix separately costs ``sum_i m_i`` rows of the decoder (about twice the width
for the paper's groups). Because the prefixes are nested, ``x_hat_i`` is ``x_hat_{i-1}`` plus
one group's contribution, so a single running residual, updated group by group, gives every
prefix for the price of one decode. The backward pass runs the groups in reverse, carrying the
sum of the later prefixes' residuals, so it also costs one decode.

With ``stop_gradient``, prefix ``i`` sees the earlier groups' contributions as constants: the
forward value is unchanged and each group's latents get gradient from their own prefix only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cumulative_prefix_mse(
    acts: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor,
    ends: Sequence[int],
    stop_gradient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prefix squared error, summed over ``d_in`` and averaged over the batch.

    Args:
        acts: (B, d_sae) latent activations.
        W_dec: (d_sae, d_in) decoder rows.
        b_dec: (d_in,) decoder bias.
        x: (B, d_in) targets (no gradient is returned for them).
        ends: increasing prefix widths; the last must be ``d_sae``.
        stop_gradient: block gradients from later prefixes into earlier groups.

    Returns:
        mse: (G,) one value per prefix, differentiable in acts, W_dec and b_dec.
        residual: (B, d_in) ``x - x_hat`` of the full dictionary, detached.
    """
    ends = _checked_ends(ends, W_dec.shape[0])
    return _CumulativePrefixMSE.apply(acts, W_dec, b_dec, x, ends, stop_gradient)


def _checked_ends(ends: Sequence[int], d_sae: int) -> tuple[int, ...]:
    """``ends`` as a tuple of ints; raise unless they increase strictly up to ``d_sae``."""
    ends = tuple(int(e) for e in ends)
    if not ends or ends[-1] != d_sae or any(b <= a for a, b in zip((0,) + ends, ends)):
        raise ValueError(f"prefix ends {list(ends)} must increase strictly up to d_sae={d_sae}")
    return ends


class _CumulativePrefixMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acts, W_dec, b_dec, x, ends, stop_gradient):
        with torch.autocast(x.device.type, enabled=False):  # the loss stays in float32
            return _CumulativePrefixMSE._forward(ctx, acts, W_dec, b_dec, x, ends, stop_gradient)

    @staticmethod
    def _forward(ctx, acts, W_dec, b_dec, x, ends, stop_gradient):
        batch = x.shape[0]
        starts = (0,) + ends[:-1]
        # residuals[g] = x - x_hat_g; each is the previous one minus one group's decode.
        residuals = torch.empty((len(ends),) + x.shape, dtype=x.dtype, device=x.device)
        torch.sub(x, b_dec, out=residuals[0])
        for g, (start, end) in enumerate(zip(starts, ends)):
            if g > 0:
                residuals[g].copy_(residuals[g - 1])
            residuals[g].addmm_(acts[:, start:end], W_dec[start:end], alpha=-1.0)
        flat = residuals.flatten(1)
        mse = torch.einsum("gi,gi->g", flat, flat) / batch
        ctx.save_for_backward(acts, W_dec, residuals)
        ctx.ends, ctx.stop_gradient = ends, stop_gradient
        residual = residuals[-1].detach().clone()
        ctx.mark_non_differentiable(residual)
        return mse, residual

    @staticmethod
    def backward(ctx, grad_mse, _grad_residual):
        acts, W_dec, residuals = ctx.saved_tensors
        ends, stop_gradient = ctx.ends, ctx.stop_gradient
        starts = (0,) + ends[:-1]
        batch = acts.shape[0]
        # d mse_i / d x_hat_i = -2 r_i / B, scaled by the upstream gradient of each prefix.
        scale = grad_mse * (-2.0 / batch)  # (G,) stays on the device: no host sync
        need_acts, need_W, need_b = ctx.needs_input_grad[:3]
        grad_acts = torch.empty_like(acts) if need_acts else None
        grad_W = torch.empty_like(W_dec) if need_W else None
        grad_b = torch.zeros_like(residuals[0][0]) if need_b else None
        # carried[g] = gradient reaching group g's contribution: the sum over the prefixes that
        # contain it (only its own prefix under stop_gradient).
        carried = torch.zeros_like(residuals[0])
        for g in reversed(range(len(ends))):
            if stop_gradient:
                torch.mul(residuals[g], scale[g], out=carried)
                if need_b:
                    grad_b += carried.sum(0)
            else:
                carried.addcmul_(residuals[g], scale[g])
            start, end = starts[g], ends[g]
            if need_acts:
                torch.mm(carried, W_dec[start:end].t(), out=grad_acts[:, start:end])
            if need_W:
                torch.mm(acts[:, start:end].t(), carried, out=grad_W[start:end])
        if need_b and not stop_gradient:
            grad_b = carried.sum(0)  # every prefix contains the bias
        return grad_acts, grad_W, grad_b, None, None, None


def sparse_cumulative_prefix_mse(
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor,
    ends: Sequence[int],
    stop_gradient: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cumulative_prefix_mse` for activations given as their non-zero entries.

    ``acts[rows[e], cols[e]] = values[e]`` (row-major order, as ``msae.kernels.sparse.ActiveLatents``);
    same results, differentiable in ``values``, ``W_dec`` and ``b_dec``. Each group's decode and
    its backward touch only the active entries (``msae.kernels.sparse``), so the cost falls with k/d_sae.
    """
    ends = _checked_ends(ends, W_dec.shape[0])
    return _SparseCumulativePrefixMSE.apply(rows, cols, values, W_dec, b_dec, x, ends, stop_gradient)


class _SparseCumulativePrefixMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, values, W_dec, b_dec, x, ends, stop_gradient):
        with torch.autocast(x.device.type, enabled=False):  # the loss stays in float32
            return _SparseCumulativePrefixMSE._forward(ctx, rows, cols, values, W_dec, b_dec, x, ends, stop_gradient)

    @staticmethod
    def _forward(ctx, rows, cols, values, W_dec, b_dec, x, ends, stop_gradient):
        from .sparse import sum_rows_by_row

        batch, n_groups = x.shape[0], len(ends)
        # Segment (group, row): the entries of group g in row b decode into contribution[g, b].
        # Groups are column ranges and columns increase within a row, so a stable sort keeps
        # each segment's columns increasing.
        group = torch.bucketize(cols, torch.tensor(ends, device=cols.device), right=True)
        segment = group * batch + rows
        if n_groups > 1:
            order = segment.argsort(stable=True)
            segment, seg_cols, seg_values = segment[order], cols[order], values[order]
        else:  # one group: the entries are in row order already
            order, seg_cols, seg_values = None, cols, values
        # residuals[g] = x - x_hat_g, built in place over each group's contribution.
        residuals = sum_rows_by_row(segment, seg_cols, seg_values, W_dec, n_groups * batch).view(n_groups, batch, -1)
        torch.sub(x - b_dec, residuals[0], out=residuals[0])
        for g in range(1, n_groups):
            torch.sub(residuals[g - 1], residuals[g], out=residuals[g])
        mse = torch.linalg.vector_norm(residuals.flatten(1), dim=1).square() / batch
        ctx.save_for_backward(order, segment, seg_cols, seg_values, W_dec, residuals)
        ctx.stop_gradient = stop_gradient
        residual = residuals[-1].detach().clone()
        ctx.mark_non_differentiable(residual)
        return mse, residual

    @staticmethod
    def backward(ctx, grad_mse, _grad_residual):
        from .sparse import sampled_dot, sum_rows_by_col

        order, segment, seg_cols, seg_values, W_dec, residuals = ctx.saved_tensors
        n_groups, batch, d_in = residuals.shape
        # carried[g]: the gradient reaching group g's contribution, from every prefix containing
        # it (its own prefix only under stop_gradient). Built in place over the saved residuals,
        # which this backward pass is the last to read.
        carried = residuals
        scale = grad_mse * (-2.0 / batch)  # d mse_g / d x_hat_g = scale[g] * residual[g]
        carried[-1].mul_(scale[-1])
        for g in reversed(range(n_groups - 1)):
            carried[g].mul_(scale[g])
            if not ctx.stop_gradient:
                carried[g].add_(carried[g + 1])
        carried_rows = carried.reshape(n_groups * batch, d_in)
        grad_values = grad_W = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_values = sampled_dot(segment, seg_cols, carried_rows, W_dec)
            if order is not None:
                grad_values = torch.empty_like(grad_values).index_copy_(0, order, grad_values)
        if ctx.needs_input_grad[3]:
            grad_W = sum_rows_by_col(segment, seg_cols, seg_values, carried_rows, W_dec.shape[0])
        if ctx.needs_input_grad[4]:  # every prefix contains the bias
            grad_b = carried.sum((0, 1)) if ctx.stop_gradient else carried[0].sum(0)
        return None, None, grad_values, grad_W, grad_b, None, None, None
