"""Linear maps whose outputs a recomputed region keeps, so that recomputing it in the backward
pass rebuilds only their inputs.

A region run under ``torch.utils.checkpoint`` is run twice: in the forward pass, keeping only
its inputs, and again in the backward pass to rebuild what its operators saved. For a GEMM
that second run is a full GEMM, although its backward needs only its input (and weight). Inside
``keeping_linear_outputs(kept)``, ``linear`` records its output on the region's first run and,
on every later run, returns the recorded output with the same autograd graph (input and weight
saved, the same backward) without multiplying again. Memory: the kept outputs, which for the
attention's first SO(2) convolution are a third of its input (83M: 2,432 of 7,424 values per
edge).

Outside such a region, ``linear`` is ``torch.nn.functional.linear``.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.nn.functional as F


class KeptOutputs:
    """The outputs of ``linear`` in one region, in call order, recorded by its first run."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.recorded = False
        self.position = 0


_ACTIVE: contextvars.ContextVar[KeptOutputs | None] = contextvars.ContextVar("kept_linear_outputs", default=None)


@contextlib.contextmanager
def keeping_linear_outputs(kept: KeptOutputs | None) -> Iterator[None]:
    """One run of a region: the first records ``linear``'s outputs into ``kept``, later runs
    replay them. ``None``: plain ``linear`` inside (for a region nested in one that keeps)."""
    token = _ACTIVE.set(kept)
    if kept is not None:
        kept.position = 0
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        if kept is not None:
            kept.recorded = True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [R, D_in] @ weight.T [D_in, D_out] (+ bias)``, as ``F.linear`` (autocast included)."""
    kept = _ACTIVE.get()
    if kept is None or not torch.is_grad_enabled():
        return F.linear(x, weight, bias)
    if not kept.recorded:
        y = _Linear.apply(x, weight, bias, None)
        kept.outputs.append(y.detach())
        return y
    y = _Linear.apply(x, weight, bias, kept.outputs[kept.position])
    kept.position += 1
    return y


class _Linear(torch.autograd.Function):
    """``F.linear`` with an explicit backward, so that the forward can return a kept output."""

    @staticmethod
    def forward(ctx, x, weight, bias, output):
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        if output is None:
            return F.linear(x, weight, bias)
        return output.view_as(output)  # a new tensor object: the kept one never gets this graph

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # in the output's dtype (the autocast dtype under autocast, as F.linear's backward);
        # differentiable in grad, x and weight, so a double backward (gradient forces) goes through
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = (grad @ weight.to(grad.dtype)).to(x.dtype)
        if need_w:
            grad_w = (grad.t() @ x.to(grad.dtype)).to(weight.dtype)
        if need_b:
            grad_b = grad.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None
