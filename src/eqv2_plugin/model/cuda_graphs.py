"""Inference replayed from CUDA graphs (the model argument ``cuda_graphs``, off by default).

Under AMP an inference of the 83M model on an H200 keeps the GPU busy for about a third of its
wall time; the rest is the host launching ~2,000 operators (``benchmarks/RESULTS.md``, GPU
profiles). A CUDA graph records those launches once and replays them in one call. Relaxations
(and any loop over the same batch) call the model with the same shapes hundreds of times, which
is where this pays.

What is recorded: everything after the edge graph is built (embeddings and blocks, and in the
monolithic model the heads), a function of tensors whose shapes depend only on the numbers of
atoms, edges and systems. The
graph itself (neighbour search, edge frames with their random rolls, Wigner rows, edge scalars)
stays eager: it reads data on the host and draws random numbers. Each call copies the new
graph's tensors into the recorded inputs, replays, and returns copies of the outputs.

A shape is recorded the second time it is seen (one-off shapes, as in a ``predict`` over varying
batches, stay eager), at most ``max_graphs`` shapes are kept (least recently used dropped), and
the recordings are dropped when the model's parameters are moved or replaced (in-place updates
such as ``load_state_dict`` are seen by the replays). Only for inference: CUDA tensors, no
autograd graph being built, direct forces.
"""
from __future__ import annotations

import collections
import contextlib
import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch

from eqv2_plugin.escn.backend import autocast_dtype
from eqv2_plugin.escn.edges import EdgeSegments
from eqv2_plugin.model.graph import EdgeGraph

Outputs = dict[str, torch.Tensor]
GraphFunction = Callable[[EdgeGraph, torch.Tensor], Outputs]
_MAX_SEEN = 4096  # shapes remembered while waiting for a second sighting
Recorder = Callable[[GraphFunction, EdgeGraph, list[torch.Tensor]], "Recording"]


def graph_inputs(graph: EdgeGraph, natoms: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the recorded function reads that changes between batches, in a fixed order
    (``rebuild_graph`` takes them back). The edge ordering by target is computed here, eagerly:
    its sizes come from the data (``bincount``), which a recording cannot read. (The ordering by
    source serves backward passes only, which a recording never runs.)"""
    tgt_order, tgt_ptr = graph.edges.by_target
    return [
        graph.edge_index, graph.edge_vec, graph.edge_scalars, graph.rotation.wigner, graph.rotation.rescale,
        graph.atomic_numbers, graph.batch, tgt_order, tgt_ptr, natoms,
    ]


def rebuild_graph(template: EdgeGraph, tensors: list[torch.Tensor]) -> tuple[EdgeGraph, torch.Tensor]:
    """The graph (and ``natoms``) made of ``tensors`` (``graph_inputs``' order), with the
    non-tensor parts of ``template``."""
    edge_index, edge_vec, edge_scalars, wigner, rescale, atomic_numbers, batch, tgt_order, tgt_ptr, natoms = tensors
    rotation = template.rotation.narrow(0, 0)  # a shell with the layout; its tensors are replaced
    rotation.wigner, rotation.rescale = wigner, rescale
    edges = EdgeSegments(edge_index, atomic_numbers.shape[0])
    edges.__dict__["by_target"] = (tgt_order, tgt_ptr)  # functools.cached_property's slot
    graph = replace(
        template, edge_index=edge_index, edge_vec=edge_vec, edge_scalars=edge_scalars, rotation=rotation,
        atomic_numbers=atomic_numbers, batch=batch, edges=edges,
    )
    return graph, natoms


def shape_key(graph: EdgeGraph, tensors: list[torch.Tensor]) -> tuple:
    """What a recording depends on besides the tensors' values."""
    device = tensors[0].device
    return (
        tuple((tuple(t.shape), t.dtype) for t in tensors), graph.num_graphs, graph.ops.name, str(device),
        autocast_dtype(device.type),
    )


@dataclass
class Recording:
    """``replay()`` recomputes ``outputs`` (in place) from the current values of ``inputs``."""

    replay: Callable[[], None]
    inputs: list[torch.Tensor]
    outputs: Outputs


def record_cuda_graph(fn: GraphFunction, graph: EdgeGraph, inputs: list[torch.Tensor]) -> Recording:
    """``fn`` over the graph made of ``inputs`` (``graph_inputs``' order), recorded as a CUDA graph."""
    # warm-up on a side stream (torch.cuda.graphs' recipe): kernels compile and the
    # allocator settles before anything is recorded
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), _uncached_autocast():
        for _ in range(2):
            fn(*rebuild_graph(graph, inputs))
    torch.cuda.current_stream().wait_stream(side)
    # a fresh graph object: what it caches from its tensors (``EdgeSegments.pair_rows``) must
    # be computed inside the recording, or replays would reuse the warm-up's values
    static_graph, static_natoms = rebuild_graph(graph, inputs)
    cuda_graph = torch.cuda.CUDAGraph()
    # its own memory pool, freed with the recording; "thread_local": other threads' CUDA
    # calls (a data loader's pinning thread) do not break the recording
    with torch.cuda.graph(cuda_graph, capture_error_mode="thread_local"), _uncached_autocast():
        outputs = fn(static_graph, static_natoms)
    return Recording(cuda_graph.replay, inputs, outputs)


def _uncached_autocast() -> contextlib.AbstractContextManager:
    """The caller's autocast state without autocast's cache of cast parameters: a cached copy
    would be made outside the recording (not replayed, so parameter updates would be missed) and
    freed when the caller's autocast region ends, while the recording still reads it."""
    dtype = autocast_dtype("cuda")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


class GraphedInference:
    """Recordings of ``fn(graph, natoms) -> {name: tensor}``, one per input shape, made by
    ``record`` (CUDA graphs; the tests also use one that reruns ``fn``).

    ``parameters``: the module's parameters and buffers; a recording is valid while they are
    the same tensors (same storage). Copies and pickles of a model start with no recordings.
    """

    def __init__(self, max_graphs: int = 4, record: Recorder = record_cuda_graph):
        if max_graphs < 1:
            raise ValueError(f"EquiformerV2: cuda_graphs keeps at least one recording, got max_graphs={max_graphs}")
        self.max_graphs, self.record = max_graphs, record
        self.recordings: collections.OrderedDict[tuple, Recording] = collections.OrderedDict()
        self.seen: collections.Counter[tuple] = collections.Counter()
        self._storage: tuple[int, ...] = ()
        self.failed = False  # a recording failed: eager from then on

    def __getstate__(self) -> dict:
        return {"max_graphs": self.max_graphs, "record": self.record}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def applies(self, graph: EdgeGraph) -> bool:
        return graph.edge_vec.is_cuda and not torch.is_grad_enabled() and not self.failed

    def __call__(
        self, fn: GraphFunction, parameters: list[torch.Tensor], graph: EdgeGraph, natoms: torch.Tensor
    ) -> Outputs:
        storage = tuple(t.data_ptr() for t in parameters)
        if storage != self._storage:  # moved, cast or replaced: the recordings would read stale memory
            self.recordings.clear()
            self._storage = storage
        tensors = graph_inputs(graph, natoms)
        key = shape_key(graph, tensors)
        rec = self.recordings.get(key)
        if rec is None:
            if len(self.seen) >= _MAX_SEEN:  # a long run over ever new shapes: forget them
                self.seen.clear()
            self.seen[key] += 1
            if self.seen[key] < 2:
                return fn(graph, natoms)
            try:
                rec = self.record(fn, graph, [t.clone() for t in tensors])
            except RuntimeError as exc:  # a CUDA or driver limitation: keep inference working
                warnings.warn(f"EquiformerV2: cuda_graphs could not record inference ({exc}); running eagerly")
                self.failed = True
                return fn(graph, natoms)
            self.recordings[key] = rec
            if len(self.recordings) > self.max_graphs:
                self.recordings.popitem(last=False)
        else:
            self.recordings.move_to_end(key)
            for dst, src in zip(rec.inputs, tensors):
                dst.copy_(src)
        rec.replay()
        return {name: t.clone() for name, t in rec.outputs.items()}
