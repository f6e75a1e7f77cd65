"""The eSCN hot-path pieces against their plain definitions."""
from __future__ import annotations

import contextlib
import math
from unittest import mock

import pytest
import torch

from eqv2_plugin.escn.grid_activation import grid_silu, grid_silu_reference
from eqv2_plugin.escn.rotation import EdgeRotation
from eqv2_plugin.escn.so2 import SO2Convolution
from eqv2_plugin.so3 import EdgeLayout, edge_frames, s2_grid_matrices


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
@pytest.mark.parametrize("chunk", [1, 5, 128])
def test_grid_silu_equals_its_definition(rows, chunk):
    layout = EdgeLayout(4, 2)
    to_grid, from_grid = s2_grid_matrices(4, 2, 18, layout.node_index)
    x = torch.randn(rows, layout.num_coefficients, 6, dtype=torch.float64, requires_grad=True)
    y = grid_silu(x, to_grid, from_grid, chunk)
    ref = grid_silu_reference(x, to_grid, from_grid)
    assert torch.allclose(y, ref, atol=1e-12)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref, x, g)
    assert torch.allclose(gx, gref, atol=1e-12)


@pytest.mark.parametrize("launch_bound, expected", [(False, 32), (True, 1)])
def test_torch_path_grid_silu_chunks(launch_bound, expected):
    """Cache-sized chunks on the CPU, few large ones where launches bind (a GPU): 83M, 8 systems,
    64 channels would be 66 chunks per call instead of 6."""
    from eqv2_plugin.escn import backend
    from eqv2_plugin.escn.torch_ops import TORCH_OPS

    layout = EdgeLayout(6, 2)
    to_grid, from_grid = (m.float() for m in s2_grid_matrices(6, 2, 18, layout.node_index))
    x = torch.randn(4000, layout.num_coefficients, 8)
    calls = []
    with mock.patch.object(backend, "launch_bound", lambda device: launch_bound), \
            mock.patch("torch.nn.functional.silu", side_effect=lambda t: calls.append(1) or torch.sigmoid(t) * t):
        y = TORCH_OPS.grid_silu(x, to_grid, from_grid)
    assert len(calls) == expected
    torch.testing.assert_close(y, grid_silu_reference(x, to_grid, from_grid), rtol=1e-4, atol=1e-5)


def test_grid_silu_second_derivatives():
    layout = EdgeLayout(3, 1)
    to_grid, from_grid = s2_grid_matrices(3, 1, None, layout.node_index)
    x = torch.randn(5, layout.num_coefficients, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: grid_silu(a, to_grid, from_grid, 2), (x,))
    assert torch.autograd.gradgradcheck(lambda a: grid_silu(a, to_grid, from_grid, 2), (x,))


@pytest.mark.parametrize("lmax, mmax", [(2, 1), (4, 2), (6, 3)])
def test_so2_convolution_commutes_with_rolls_about_the_edge(lmax, mmax):
    """Rolling the edge frame about +y by t multiplies (+m, -m) by a 2D rotation of m*t;
    the SO(2) convolution must commute with it (it is the definition of the layer)."""
    torch.manual_seed(0)
    layout = EdgeLayout(lmax, mmax)
    conv = SO2Convolution(3, 4, layout, radial_channels=[5, 8], extra_m0_outputs=2).double()
    scalars = torch.randn(11, 5, dtype=torch.float64)
    vec = torch.randn(11, 3, dtype=torch.float64)
    frames = edge_frames(vec, mode="deterministic")
    t = 0.7
    c, s = math.cos(t), math.sin(t)
    roll = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=torch.float64)
    # the same node features seen from two frames that differ by a roll
    node = torch.randn(11, (lmax + 1) ** 2, 3, dtype=torch.float64)
    a, b = EdgeRotation(frames, layout), EdgeRotation(roll @ frames, layout)
    ya, ea = conv(a.to_edge(node), scalars)
    yb, eb = conv(b.to_edge(node), scalars)
    assert torch.allclose(ea, eb, atol=1e-12)  # invariant outputs do not see the roll
    assert torch.allclose(a.from_edge(ya), b.from_edge(yb), atol=1e-12)  # equivariant outputs agree


@pytest.mark.parametrize("with_alpha", [True, False])
def test_rotate_scatter_backward_is_the_derivative(with_alpha):
    """The torch path's rotate_scatter keeps only its inputs and rebuilds the rest in the backward
    pass: first and second derivatives (values, Wigner rows, alpha) checked numerically."""
    from eqv2_plugin.escn.edges import EdgeSegments
    from eqv2_plugin.escn.torch_ops import TORCH_OPS

    torch.manual_seed(0)
    layout = EdgeLayout(3, 2)
    E, N, C, H = 6, 4, 4, 2
    edges = EdgeSegments(torch.tensor([[0, 1, 2, 3, 1, 0], [1, 2, 3, 0, 0, 0]]), N)
    rotation = EdgeRotation(edge_frames(torch.randn(E, 3, dtype=torch.float64), mode="deterministic"), layout)
    wigner = rotation.wigner.detach().requires_grad_(True)
    values = torch.randn(E, layout.num_coefficients, C, dtype=torch.float64, requires_grad=True)
    alpha = torch.rand(E, H, dtype=torch.float64, requires_grad=True) if with_alpha else None

    def fn(v, w, *a):
        rotation.wigner = w
        return TORCH_OPS.rotate_scatter(v, rotation, edges, a[0] if a else None, N)

    inputs = (values, wigner) + ((alpha,) if with_alpha else ())
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("num_edges", [0, 1, 13])
def test_gather_rotate_is_source_then_target_rotated(num_edges):
    """The torch path gathers both ends of every edge in one pass over [N*K, C] rows: values and
    gradients equal the plain definition, rotate(concat(x[source], x[target]))."""
    from eqv2_plugin.escn.edges import EdgeSegments
    from eqv2_plugin.escn.torch_ops import TORCH_OPS

    torch.manual_seed(0)
    layout = EdgeLayout(3, 2)
    N, C = 5, 3
    edges = EdgeSegments(torch.randint(0, N, (2, num_edges)), N)  # repeated nodes, self-pairs
    rotation = EdgeRotation(edge_frames(torch.randn(num_edges, 3, dtype=torch.float64), mode="deterministic"), layout)
    x = torch.randn(N, (layout.lmax + 1) ** 2, C, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(num_edges, layout.num_coefficients, 2 * C, dtype=torch.float64)

    ours = TORCH_OPS.gather_rotate(x, rotation, edges)
    plain = rotation.to_edge(torch.cat([x[edges.source], x[edges.target]], dim=2))
    assert ours.shape == (num_edges, layout.num_coefficients, 2 * C)
    assert torch.allclose(ours, plain, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours, x, upstream)
    (g_plain,) = torch.autograd.grad(plain, x, upstream)
    assert torch.allclose(g_ours, g_plain, rtol=1e-12, atol=1e-12)


def test_rotate_scatter_in_edge_chunks_equals_one_piece():
    """The CPU path's chunked rotate_scatter (4 edges at a time over 10) gives the unchunked
    values and gradients: float64 to 1e-12, and under bf16 autocast of float32 inputs (where the
    per-edge products, and so the sum, come out in bf16) to bf16 rounding."""
    from _reference import edge_chunks_of
    from eqv2_plugin.escn.edges import EdgeSegments
    from eqv2_plugin.escn.torch_ops import TORCH_OPS

    torch.manual_seed(0)
    layout = EdgeLayout(3, 2)
    E, N, C, H = 10, 4, 4, 2
    edges = EdgeSegments(torch.randint(0, N, (2, E)), N)
    frames = edge_frames(torch.randn(E, 3, dtype=torch.float64), mode="deterministic")
    upstream = torch.randn(N, (layout.lmax + 1) ** 2, C, dtype=torch.float64)

    for dtype, autocast, tol in ((torch.float64, False, 1e-12), (torch.float32, True, 2e-2)):
        rotation = EdgeRotation(frames.to(dtype), layout)
        values = torch.randn(E, layout.num_coefficients, C, dtype=dtype, requires_grad=True)
        alpha = torch.rand(E, H, dtype=dtype, requires_grad=True)

        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = TORCH_OPS.rotate_scatter(values, rotation, edges, alpha, N)
            return (out, *torch.autograd.grad(out, (values, alpha), upstream.to(out.dtype)))

        whole = run()
        with edge_chunks_of(4) as seen:
            chunked = run()
        assert seen == [3]
        assert chunked[0].dtype == (torch.bfloat16 if autocast else dtype)
        for a, b in zip(chunked, whole):
            assert a.dtype == b.dtype
            assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


def test_wigner_rows_ignore_autocast():
    """Edge-frame Wigner rows are geometry: built in the frames' precision under autocast too
    (they were built in bf16 and the model failed to run under autocast)."""
    layout = EdgeLayout(4, 2)
    frames = edge_frames(torch.randn(9, 3), mode="deterministic")
    plain = EdgeRotation(frames, layout).wigner
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = EdgeRotation(frames, layout).wigner
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, plain)


# Ops that CUDA's autocast runs in float32 (torch's autocast op reference), among those a model
# calls; CPU autocast leaves them in the half dtype, so CPU runs alone hide dtype clashes that
# only a GPU shows (one did: the attention softmax, under fp16 AMP on an H200).
CUDA_AUTOCAST_FLOAT32_OPS = [
    (torch, "exp"), (torch.Tensor, "exp"), (torch, "pow"), (torch.Tensor, "pow"), (torch.Tensor, "__pow__"),
    (torch, "rsqrt"), (torch.Tensor, "rsqrt"), (torch, "sum"), (torch.Tensor, "sum"), (torch, "cumsum"),
    (torch.Tensor, "cumsum"), (torch, "norm"), (torch.Tensor, "norm"), (torch.linalg, "vector_norm"),
    (torch, "softmax"), (torch.Tensor, "softmax"), (torch, "log"), (torch.Tensor, "log"), (torch, "reciprocal"),
    (torch.Tensor, "reciprocal"), (torch.Tensor, "__rtruediv__"), (torch.nn.functional, "layer_norm"),
    (torch.nn.functional, "softmax"), (torch.nn.functional, "normalize"),
]


@contextlib.contextmanager
def cuda_autocast_float32_ops():
    """While CPU autocast is on, the ops above take half-precision tensors up to float32, as
    CUDA's autocast does (CPU autocast already casts the matmul-like ops down)."""
    def lifted(original):
        def op(*args, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                up = lambda a: a.float() if torch.is_tensor(a) and a.dtype in (torch.float16, torch.bfloat16) else a
                args = tuple(up(a) for a in args)
                kwargs = {k: up(v) for k, v in kwargs.items()}
            return original(*args, **kwargs)
        return op

    with contextlib.ExitStack() as stack:
        for owner, name in CUDA_AUTOCAST_FLOAT32_OPS:
            stack.enter_context(mock.patch.object(owner, name, lifted(getattr(owner, name))))
        yield


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lifted_exp", [False, True])
def test_segment_softmax_in_half_precision(dtype, lifted_exp):
    """Half-precision logits give a softmax in their dtype, equal to the float64 one to that
    dtype's rounding, whether or not ``exp`` lifts them to float32 (CUDA autocast does)."""
    from eqv2_plugin.model.graph import segment_softmax

    def per_segment_softmax(values: torch.Tensor) -> torch.Tensor:  # torch.softmax, one segment at a time
        out = torch.empty_like(values)
        for s in segment.unique():
            out[segment == s] = torch.softmax(values[segment == s], dim=0)
        return out

    g = torch.Generator().manual_seed(4)
    logits = 8 * torch.randn(40, 3, generator=g)
    segment = torch.randint(0, 6, (40,), generator=g)  # segment 6 of 7 stays empty
    with (cuda_autocast_float32_ops() if lifted_exp else contextlib.nullcontext()), torch.autocast("cpu", dtype=dtype):
        alpha = segment_softmax(logits.to(dtype), segment, 7)
    assert alpha.dtype == dtype
    # only the final rounding to the dtype: a softmax of the rounded logits, to ~2^-9 / 2^-12
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    assert (alpha.double() - per_segment_softmax(logits.to(dtype).double())).abs().max() < tol
    # and the rounding of the logits themselves (up to ~8 * 2^-8 for bf16) on top
    assert (alpha.double() - per_segment_softmax(logits.double())).abs().max() < 15 * tol


@pytest.mark.parametrize("cuda_like", [False, True])
@pytest.mark.parametrize("direct_forces", [True, False])
def test_training_step_runs_under_autocast(direct_forces, cuda_like):
    """A whole training step (forward, backward) under CPU bf16 autocast gives finite gradients
    for every parameter that gets one (rotate_scatter's backward used to meet a bf16 gradient
    with float32 inputs); ``cuda_like``: with CUDA's float32 op list (the attention softmax
    used to meet float32 exponentials with bf16 logits in an ``index_add``)."""
    import eqv2_plugin
    from _reference import SMALL
    from _systems import oc20_like_atoms, to_batch

    torch.manual_seed(0)
    model = eqv2_plugin.EquiformerV2(**dict(SMALL, num_layers=1), direct_forces=direct_forces).train()
    batch = to_batch(oc20_like_atoms(1, seed=2))
    # patched for the backward too: activation checkpointing recomputes under autocast there
    with cuda_autocast_float32_ops() if cuda_like else contextlib.nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        (out["energy"].float().sum() + out["forces"].float().pow(2).sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
