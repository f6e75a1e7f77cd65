"""The Triton implementation of the eSCN hot path equals the torch path.

Without a GPU the kernels run in triton's interpreter (``TRITON_INTERPRET=1``,
set by ``conftest.py`` before anything imports triton); with CUDA they are compiled
and run on the GPU. Values and gradients (fp32) must agree to 1e-5 relative
over random shapes: L 2..8, M 1..4, 0, 1 and odd numbers of edges, channel
counts below, at and above the channel block; the separable layer norm over L 1..8,
0, 1 and several nodes, 1 to 128 channels.
"""
from __future__ import annotations

import pytest
import torch

import eqv2_plugin
from _reference import SMALL, perturb_, rel_err
from _systems import oc20_like_atoms, to_batch
from eqv2_plugin.escn.backend import resolve_ops
from eqv2_plugin.escn.edges import EdgeSegments
from eqv2_plugin.escn.rotation import EdgeRotation
from eqv2_plugin.escn.torch_ops import TORCH_OPS
from eqv2_plugin.layers.norms import SeparableLayerNorm
from eqv2_plugin.so3 import EdgeLayout, edge_frames, s2_grid_matrices

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOL = 1e-5
# the interpreter indexes numpy arrays in a way numpy 1.25+ flags, once per loop step
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")
# whole-model checks: the released L4 M2 block at small widths, one layer, 6 neighbours per atom
# (interpreted kernels cost about a millisecond per program)
MODEL_CFG = {**SMALL, "num_layers": 1, "max_neighbors": 6, "edge_frame": "deterministic", "alpha_drop": 0.0,
             "drop_path_rate": 0.0}

# (lmax, mmax, edges, nodes, channels): every L in 2..8, M in 1..4, E in {0, 1, odd}, C around the block (64)
SHAPES = [
    (2, 1, 37, 9, 3),
    (2, 2, 1, 1, 16),
    (3, 1, 0, 4, 8),
    (4, 2, 37, 7, 20),
    (4, 2, 53, 11, 70),
    (5, 3, 23, 5, 64),
    (6, 3, 17, 6, 33),
    (6, 4, 1, 2, 5),
    (7, 4, 13, 4, 12),
    (8, 4, 11, 3, 24),
    (8, 2, 0, 3, 7),
]


def _triton_ops():
    return resolve_ops("triton", DEVICE)


def _edges(lmax: int, mmax: int, num_edges: int, num_nodes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    layout = EdgeLayout(lmax, mmax)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g).to(DEVICE)
    frames = edge_frames(torch.randn(num_edges, 3, generator=g, dtype=torch.float64), mode="deterministic")
    rotation = EdgeRotation(frames.float().to(DEVICE), layout)
    rotation.wigner = rotation.wigner.detach().requires_grad_(True)
    return layout, rotation, EdgeSegments(edge_index, num_nodes), g


def _randn(g, *shape, grad=True):
    return torch.randn(*shape, generator=g).to(DEVICE).requires_grad_(grad)


def _assert_same(name, ours, ref):
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert a.shape == b.shape, (name, i)
        if b.numel():
            assert rel_err(a, b) < TOL, f"{name}[{i}]: relative error {rel_err(a, b):.2e}"


def _values_and_grads(fn, inputs, seed):
    out = fn()
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    grads = torch.autograd.grad(out, inputs, upstream, allow_unused=True)
    return [out.detach(), *[torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]]


@pytest.mark.parametrize("lmax, mmax, num_edges, num_nodes, channels", SHAPES)
def test_gather_rotate(lmax, mmax, num_edges, num_nodes, channels):
    layout, rotation, edges, g = _edges(lmax, mmax, num_edges, num_nodes, seed=lmax * 100 + channels)
    x = _randn(g, num_nodes, (lmax + 1) ** 2, channels)
    inputs = (x, rotation.wigner)
    ref = _values_and_grads(lambda: TORCH_OPS.gather_rotate(x, rotation, edges), inputs, 1)
    ours = _values_and_grads(lambda: _triton_ops().gather_rotate(x, rotation, edges), inputs, 1)
    assert ours[0].shape == (num_edges, layout.num_coefficients, 2 * channels)
    _assert_same("gather_rotate", ours, ref)


@pytest.mark.parametrize("lmax, mmax, num_edges, num_nodes, channels", SHAPES)
@pytest.mark.parametrize("rows", ["all", "m0"])
def test_rotate_scatter(lmax, mmax, num_edges, num_nodes, channels, rows):
    """Attention-weighted messages (all edge coefficients) and the edge-degree embedding (m=0 only)."""
    layout, rotation, edges, g = _edges(lmax, mmax, num_edges, num_nodes, seed=lmax * 10 + channels)
    k = layout.num_coefficients if rows == "all" else lmax + 1
    values = _randn(g, num_edges, k, channels)
    heads = next(h for h in (4, 3, 2, 1) if channels % h == 0)
    alpha = torch.rand(num_edges, heads, generator=g).to(DEVICE).requires_grad_(True) if rows == "all" else None
    inputs = (values, rotation.wigner) + ((alpha,) if alpha is not None else ())
    ref = _values_and_grads(lambda: TORCH_OPS.rotate_scatter(values, rotation, edges, alpha, num_nodes), inputs, 2)
    ours = _values_and_grads(lambda: _triton_ops().rotate_scatter(values, rotation, edges, alpha, num_nodes), inputs, 2)
    assert ours[0].shape == (num_nodes, (lmax + 1) ** 2, channels)
    _assert_same("rotate_scatter", ours, ref)


@pytest.mark.parametrize("lmax, mmax, num_edges, num_nodes, channels", SHAPES)
def test_grid_silu(lmax, mmax, num_edges, num_nodes, channels):
    layout = EdgeLayout(lmax, mmax)
    to_grid, from_grid = (m.float().to(DEVICE) for m in s2_grid_matrices(lmax, mmax, None, layout.node_index))
    g = torch.Generator().manual_seed(lmax + channels)
    x = _randn(g, num_edges, layout.num_coefficients, channels)
    ref = _values_and_grads(lambda: TORCH_OPS.grid_silu(x, to_grid, from_grid), (x,), 3)
    ours = _values_and_grads(lambda: _triton_ops().grid_silu(x, to_grid, from_grid), (x,), 3)
    _assert_same("grid_silu", ours, ref)


def _norm_inputs(lmax: int, num_nodes: int, channels: int, seed: int):
    """``x [N, (L+1)^2, C]`` and an SLN's parameters (perturbed away from ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    norm = SeparableLayerNorm(lmax, channels)
    with torch.no_grad():
        for p in norm.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    norm.to(DEVICE)
    x = _randn(g, num_nodes, (lmax + 1) ** 2, channels) * 3.0 + 0.5  # not already centred / unit
    return x.detach().requires_grad_(True), norm


# (lmax, nodes, channels): one, several and no nodes; channels 2 (the fewest a LayerNorm
# normalises: with one, its gradient is rounding noise), odd, at and past 16 and 64
NORM_SHAPES = [(1, 5, 16), (2, 1, 3), (3, 0, 8), (4, 7, 70), (6, 9, 128), (6, 4, 2), (8, 3, 24)]


@pytest.mark.parametrize("lmax, num_nodes, channels", NORM_SHAPES)
def test_separable_layer_norm(lmax, num_nodes, channels):
    """The fused SLN kernels against ``layers.norms.separable_layer_norm``: output, and gradients
    for the input, the l=0 LayerNorm's weight and bias, and the per-degree weights."""
    x, norm = _norm_inputs(lmax, num_nodes, channels, seed=lmax * 1000 + channels)
    inputs = (x, norm.l0_norm.weight, norm.l0_norm.bias, norm.weight)
    ref = _values_and_grads(lambda: norm(x, TORCH_OPS), inputs, 4)
    ours = _values_and_grads(lambda: norm(x, _triton_ops()), inputs, 4)
    assert ours[0].shape == x.shape and ours[0].dtype == torch.float32
    _assert_same("separable_layer_norm", ours, ref)


def test_separable_layer_norm_half_input_and_double_backward():
    """A float16 input comes out float32 with a float16 input gradient (the norm runs in fp32
    under autocast); second derivatives (training with gradient forces) match the torch path."""
    x, norm = _norm_inputs(4, 6, 12, seed=3)
    half = x.detach().half().requires_grad_(True)
    for ops in (TORCH_OPS, _triton_ops()):
        with torch.autocast(DEVICE.type, dtype=torch.float16, enabled=DEVICE.type == "cuda"):
            out = norm(half, ops)
        assert out.dtype == torch.float32
        (grad,) = torch.autograd.grad(out.square().sum(), half)
        assert grad.dtype == torch.float16
    results = {}
    for name, ops in (("torch", TORCH_OPS), ("triton", _triton_ops())):
        params = (x, norm.l0_norm.weight, norm.l0_norm.bias, norm.weight)
        first = torch.autograd.grad((norm(x, ops) ** 3).sum(), params, create_graph=True)
        second = torch.autograd.grad(sum((f ** 2).sum() for f in first), params)
        results[name] = [f.detach() for f in first] + list(second)
    _assert_same("separable_layer_norm double backward", results["triton"], results["torch"])


def _second_derivatives(ops, lmax=3, mmax=2, num_edges=9, num_nodes=4, channels=6):
    """d/d(inputs) of a scalar of the first derivatives (what training with gradient forces needs)."""
    layout, rotation, edges, g = _edges(lmax, mmax, num_edges, num_nodes, seed=7)
    x = _randn(g, num_nodes, (lmax + 1) ** 2, channels)
    alpha = torch.rand(num_edges, 2, generator=g).to(DEVICE).requires_grad_(True)
    to_grid, from_grid = (m.float().to(DEVICE) for m in s2_grid_matrices(lmax, mmax, None, layout.node_index))
    msg = ops.gather_rotate(x, rotation, edges)
    hidden = ops.grid_silu(msg, to_grid, from_grid)
    out = ops.rotate_scatter(hidden, rotation, edges, alpha, num_nodes)
    energy = (out ** 2).sum()
    first = torch.autograd.grad(energy, (x, rotation.wigner, alpha), create_graph=True)
    second = torch.autograd.grad(sum((f ** 2).sum() for f in first), (x, rotation.wigner, alpha))
    return [energy.detach(), *[f.detach() for f in first], *second]


def test_second_derivatives_match():
    _assert_same("double backward", _second_derivatives(_triton_ops()), _second_derivatives(TORCH_OPS))


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else []))
def test_autocast_half_precision(dtype):
    """Under autocast the kernels take half-precision inputs (accumulating in fp32) and agree
    with the torch path under the same autocast to half-precision rounding. (bf16 only on a
    GPU: the interpreter computes with numpy, which has no bf16.)"""
    layout, rotation, edges, g = _edges(4, 2, 37, 7, seed=11)
    x = torch.randn(7, 25, 16, generator=g).to(DEVICE)
    values = torch.randn(37, layout.num_coefficients, 16, generator=g).to(DEVICE)
    alpha = torch.rand(37, 4, generator=g).to(DEVICE)
    to_grid, from_grid = (m.float().to(DEVICE) for m in s2_grid_matrices(4, 2, 18, layout.node_index))
    results = {}
    for name, ops in (("torch", TORCH_OPS), ("triton", _triton_ops())):
        with torch.no_grad(), torch.autocast(DEVICE.type, dtype=dtype):
            results[name] = (
                ops.gather_rotate(x, rotation, edges),
                ops.rotate_scatter(values, rotation, edges, alpha, 7),
                ops.grid_silu(values, to_grid, from_grid),
            )
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    for ours, ref in zip(results["triton"], results["torch"]):
        assert ours.dtype == dtype
        assert rel_err(ours.float(), ref.float()) < tol


@pytest.fixture(scope="module")
def small_batch():
    return oc20_like_atoms(1, seed=5)


@pytest.mark.parametrize("direct_forces", [True, False])
def test_whole_model_triton_equals_torch(small_batch, direct_forces):
    """Energies and forces of an OC20-like system through every layer (released L4 M2 block, small widths)."""
    torch.manual_seed(0)
    cfg = {**MODEL_CFG, "direct_forces": direct_forces}
    models = {}
    for backend in ("torch", "triton"):
        model = eqv2_plugin.EquiformerV2(**cfg, kernel_backend=backend)
        if backend == "torch":
            perturb_(model)
        else:
            model.load_state_dict(models["torch"].state_dict())
        models[backend] = model.eval().to(DEVICE)
    results = {}
    for backend, model in models.items():
        batch = to_batch(small_batch).to(DEVICE)
        out = model(batch)
        results[backend] = (out["energy"].detach(), out["forces"].detach())
        assert model.build_graph(to_batch(small_batch).to(DEVICE)).ops.name == backend
    e_ref, f_ref = results["torch"]
    e_tri, f_tri = results["triton"]
    assert rel_err(e_tri, e_ref) < TOL
    assert rel_err(f_tri, f_ref) < 5 * TOL  # forces: a difference of sums, fp32 rounding of both paths
    assert f_ref.abs().max() > 0


def test_training_step_gradients_match(small_batch):
    """Parameter gradients of a direct-force loss agree between the backends."""
    torch.manual_seed(0)
    cfg = MODEL_CFG
    grads = {}
    state = None
    for backend in ("torch", "triton"):
        model = eqv2_plugin.EquiformerV2(**cfg, kernel_backend=backend).to(DEVICE)
        if state is None:
            perturb_(model)
            state = model.state_dict()
        else:
            model.load_state_dict(state)
        out = model(to_batch(small_batch).to(DEVICE))
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        loss.backward()
        grads[backend] = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert rel_err(grads["triton"], grads["torch"]) < 5 * TOL


def test_backend_selection(monkeypatch):
    assert resolve_ops("auto", torch.device("cpu")).name == "torch"
    assert resolve_ops("torch", DEVICE).name == "torch"
    assert resolve_ops("triton", DEVICE).name == "triton"
    if DEVICE.type == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            resolve_ops("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="kernel_backend"):
        eqv2_plugin.EquiformerV2(**SMALL, kernel_backend="cuda")
