"""Inference replayed from CUDA graphs (``cuda_graphs: true``, ``model/cuda_graphs.py``).

On the CPU: the recorded function reads every per-batch tensor through its inputs (so a replay
with new data computes the new batch) and nothing else but the model's parameters and buffers,
and makes no call that reads device data on the host (which a recording cannot contain); the
policy of recording, reusing and dropping recordings. With CUDA: replays equal eager inference
(monolithic model and hydra backbone). Runs without fairchem (the GPU machines have none)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import eqv2_plugin
from _reference import SMALL, perturb_, rel_err
from _systems import oc20_like_atoms, to_batch
from eqv2_plugin.escn import backend
from eqv2_plugin.model.cuda_graphs import GraphedInference, Recording, graph_inputs, rebuild_graph

CFG = {**SMALL, "max_radius": 12.0, "edge_frame": "deterministic"}


def _model(**kw) -> eqv2_plugin.EquiformerV2:
    torch.manual_seed(0)
    model = eqv2_plugin.EquiformerV2(**CFG, **kw)
    perturb_(model)
    return model.eval()


def _two_batches(seed: int = 3):
    """The same system twice, moved differently: same atoms and (capped) edge counts."""
    first = oc20_like_atoms(1, seed=seed)
    second = [a.copy() for a in first]
    for a in second:
        a.rattle(0.05, seed=seed + 1)
    return to_batch(first), to_batch(second)


# ops that read device data on the host (a CUDA synchronisation; not allowed in a recording)
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "bincount", "unique_consecutive", "_unique",
              "_unique2", "unique_dim", "repeat_interleave", "is_nonzero", "equal"}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS and not (name == "repeat_interleave" and (kwargs or {}).get("output_size")):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def test_recorded_function_reads_every_batch_tensor_through_its_inputs():
    """Copy a second batch into tensors taken from the first, as a replay does: the outputs are
    the second batch's, so nothing of the first batch is read from elsewhere."""
    model = _model(kernel_backend="torch")
    first, second = _two_batches()
    with torch.no_grad():
        g1, g2 = model.build_graph(first), model.build_graph(second)
        inputs = [t.clone() for t in graph_inputs(g1, first.natoms)]
        new = graph_inputs(g2, second.natoms)
        assert [t.shape for t in inputs] == [t.shape for t in new]  # one recording serves both
        expected = model.outputs(g2, second.natoms)
        before = model.outputs(*rebuild_graph(g1, inputs))
        for dst, src in zip(inputs, new):
            dst.copy_(src)
        replayed = model.outputs(*rebuild_graph(g1, inputs))
    assert rel_err(before["energy"], expected["energy"]) > 1e-4  # the two batches differ
    for name in ("energy", "forces"):
        torch.testing.assert_close(replayed[name], expected[name], rtol=1e-6, atol=1e-7)


class ForeignReads(TorchDispatchMode):
    """Tensors an op reads that are neither ``allowed`` nor made by an earlier op in the region:
    in a recording those would be memory it does not refresh from its inputs."""

    def __init__(self, allowed: list[torch.Tensor]):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in allowed}
        self.found = []
        self.in_kernel = False  # triton's interpreter copying a kernel's arguments: not the model's reads

    def check(self, name: str, tensors) -> None:
        for t in torch.utils._pytree.tree_leaves(tensors):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.known:
                self.found.append((name, tuple(t.shape)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.in_kernel:
            self.check(func.overloadpacket.__name__, (args, kwargs or {}))
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.known.add(t.untyped_storage().data_ptr())
        return out

    def watch_triton_launches(self, monkeypatch) -> None:
        """Check the tensors passed to each Triton kernel too (they bypass the dispatcher)."""
        from eqv2_plugin.escn.triton import kernels

        reads = self

        class Launch:
            def __init__(self, name, kernel):
                self.name, self.kernel = name, kernel

            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    reads.check(self.name, (args, kwargs))
                    reads.in_kernel = True
                    try:
                        return self.kernel[grid](*args, **kwargs)
                    finally:
                        reads.in_kernel = False

                return launch

        for name in dir(kernels):
            kernel = getattr(kernels, name)
            if hasattr(kernel, "fn") and not name.startswith("_"):
                monkeypatch.setattr(kernels, name, Launch(name, kernel))


def _recorded_part(monkeypatch, gpu_shapes: bool):
    """A model on the torch path (in its GPU shapes if asked), a batch, its graph and copies of
    the graph's tensors as a recording would hold them."""
    if gpu_shapes:
        monkeypatch.setattr(backend, "launch_bound", lambda device: True)
    model = _model(kernel_backend="torch")
    batch, _ = _two_batches()
    with torch.no_grad():
        graph = model.build_graph(batch)
    return model, batch, graph, [t.clone() for t in graph_inputs(graph, batch.natoms)]


@pytest.mark.parametrize("gpu_shapes", [False, True])
def test_recorded_function_reads_only_its_inputs_and_the_model(monkeypatch, gpu_shapes):
    """Every tensor the recorded part reads is an input, a parameter or buffer, or made inside
    it; this also covers tensors equal in the two batches of the test above (the rotation rescale)."""
    model, batch, graph, inputs = _recorded_part(monkeypatch, gpu_shapes)
    static = rebuild_graph(graph, inputs)
    with torch.no_grad():
        with ForeignReads([*inputs, *model.parameters(), *model.buffers()]) as reads:
            model.outputs(*static)
        assert reads.found == []
        with ForeignReads([*inputs, *model.parameters(), *model.buffers()]) as control:
            model.outputs(graph, batch.natoms)  # the original graph: its tensors are foreign here
        assert control.found


def test_recorded_triton_path_reads_only_its_inputs_and_the_model(monkeypatch):
    """The same for the Triton path (interpreted; a one-layer model on a 4-atom cell), whose
    kernels also read the edge orderings."""
    from ase.build import bulk

    torch.manual_seed(0)
    model = eqv2_plugin.EquiformerV2(**{**CFG, "num_layers": 1}, kernel_backend="triton").eval()
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.rattle(0.05, seed=0)
    batch = to_batch([cell])
    with torch.no_grad():
        graph = model.build_graph(batch)
        inputs = [t.clone() for t in graph_inputs(graph, batch.natoms)]
        static = rebuild_graph(graph, inputs)
        reads = ForeignReads([*inputs, *model.parameters(), *model.buffers()])
        reads.watch_triton_launches(monkeypatch)
        with reads:
            model.outputs(*static)
        assert reads.found == []
        static[0].edges.__dict__["by_target"] = graph.edges.by_target  # a stale ordering is seen
        with reads:
            model.outputs(*static)
        assert reads.found == [("rotate_scatter_fwd", (80,)), ("rotate_scatter_fwd", (5,))] * 3  # order, ptr


@pytest.mark.parametrize("gpu_shapes", [False, True])
def test_recorded_function_makes_no_host_reads(monkeypatch, gpu_shapes):
    model, _, graph, inputs = _recorded_part(monkeypatch, gpu_shapes)
    with torch.no_grad():
        with HostReads() as reads:
            out = model.outputs(*rebuild_graph(graph, inputs))
        assert reads.found == []
        assert out["forces"].abs().max() > 0
        with HostReads() as control:  # the check sees what it looks for
            out["energy"].sum().item()
        assert control.found == ["_local_scalar_dense"]


@pytest.mark.parametrize("cls", [eqv2_plugin.EquiformerV2, eqv2_plugin.EquiformerV2Backbone])
def test_cuda_graphs_argument_is_checked(cls):
    with pytest.raises(ValueError, match="cuda_graphs"):
        cls(**CFG, cuda_graphs="yes")
    with pytest.raises(ValueError, match="direct_forces"):
        cls(**CFG, cuda_graphs=True, direct_forces=False)
    assert cls(**CFG, cuda_graphs=True).graphed_inference is not None


def test_on_cpu_and_while_training_the_model_runs_eagerly():
    model = _model(cuda_graphs=True)
    batch, _ = _two_batches()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
    assert not model.graphed_inference.recordings and not model.graphed_inference.seen
    assert copy.deepcopy(model).graphed_inference.max_graphs == model.graphed_inference.max_graphs


def _rerun(fn, graph, inputs) -> Recording:
    """A recorder for the CPU: a replay reruns ``fn`` on the recorded inputs."""
    outputs = fn(*rebuild_graph(graph, inputs))

    def replay():
        for name, t in fn(*rebuild_graph(graph, inputs)).items():
            outputs[name].copy_(t)

    return Recording(replay, inputs, outputs)


def test_recordings_per_shape_second_sighting_and_least_recently_used():
    model = _model(kernel_backend="torch")
    cache = GraphedInference(max_graphs=2, record=_rerun)
    first, second = _two_batches()
    shapes = [to_batch(oc20_like_atoms(1, seed=s)) for s in (11, 12)]
    with torch.no_grad():
        expected = {id(b): model.outputs(model.build_graph(b), b.natoms) for b in (first, second, *shapes)}

        def call(batch):
            params = [*model.parameters(), *model.buffers()]
            out = cache(model.outputs, params, model.build_graph(batch), batch.natoms)
            for name in ("energy", "forces"):
                torch.testing.assert_close(out[name], expected[id(batch)][name], rtol=1e-6, atol=1e-7)
            return out

        call(first)
        assert not cache.recordings  # seen once
        call(first)
        assert len(cache.recordings) == 1
        recording = next(iter(cache.recordings.values()))
        out = call(second)  # same shapes: the recording, with the second batch copied in
        assert next(iter(cache.recordings.values())) is recording and len(cache.recordings) == 1
        again = call(second)
        assert again["energy"].data_ptr() != out["energy"].data_ptr()  # callers get their own copies
        for batch in (shapes[0], shapes[0], shapes[1], shapes[1]):  # two more shapes, at most two kept
            call(batch)
        assert len(cache.recordings) == 2 and recording not in cache.recordings.values()
        call(first)  # seen twice before: recorded again at once
        assert len(cache.recordings) == 2
        kept = cache.recordings[next(reversed(cache.recordings))]
        weight = next(model.parameters())
        weight.data = weight.data.clone()  # new storage (as .to() or .half() make): recordings dropped
        call(first)
        assert list(cache.recordings.values()) != [kept] and len(cache.recordings) == 1


def test_a_failed_recording_leaves_inference_eager():
    def fail(fn, graph, inputs):
        raise RuntimeError("operation not permitted when stream is capturing")

    model = _model(kernel_backend="torch")
    cache = GraphedInference(record=fail)
    batch, _ = _two_batches()
    with torch.no_grad():
        graph = model.build_graph(batch)
        params = [*model.parameters(), *model.buffers()]
        cache(model.outputs, params, graph, batch.natoms)
        with pytest.warns(UserWarning, match="running eagerly"):
            out = cache(model.outputs, params, graph, batch.natoms)
        torch.testing.assert_close(out["energy"], model.outputs(graph, batch.natoms)["energy"])
    assert cache.failed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True])
def test_replays_equal_eager_inference(amp):
    eager = _model().cuda()
    graphed = _model(cuda_graphs=True).cuda()
    graphed.load_state_dict(eager.state_dict())
    first, second = (b.to("cuda") for b in _two_batches())
    other = to_batch(oc20_like_atoms(1, seed=11)).to("cuda")  # another shape
    recordings = graphed.graphed_inference.recordings

    def check(batch):
        got, want = graphed(batch), eager(batch)
        for name in ("energy", "forces"):
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        check(first)
        assert not recordings  # a shape is recorded the second time it is seen
        for batch in (first, second, first, other, second):
            check(batch)
        assert not graphed.graphed_inference.failed
        assert len(recordings) == 1  # `other` was seen once
        recording = next(iter(recordings.values()))
        for model in (graphed, eager):  # in-place updates (optimizer steps, load_state_dict) are replayed
            for p in model.parameters():
                p.mul_(1.01)
        check(second)
        weight = next(graphed.parameters())
        old = weight.data
        weight.data = old.clone()  # new storage, as .to() makes: the old recording would read `old`
        old.zero_()
        check(second)
        assert next(iter(recordings.values())) is not recording


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hydra_backbone_replays_equal_eager():
    torch.manual_seed(0)
    eager = eqv2_plugin.EquiformerV2Backbone(**CFG).eval().cuda()
    graphed = eqv2_plugin.EquiformerV2Backbone(**CFG, cuda_graphs=True).eval().cuda()
    graphed.load_state_dict(eager.state_dict())
    first, second = (b.to("cuda") for b in _two_batches())
    with torch.no_grad():
        for batch in (first, first, second):
            got, want = graphed(batch), eager(batch)
            torch.testing.assert_close(got["node_embedding"], want["node_embedding"], rtol=1e-5, atol=1e-5)
    assert len(graphed.graphed_inference.recordings) == 1 and not graphed.graphed_inference.failed
