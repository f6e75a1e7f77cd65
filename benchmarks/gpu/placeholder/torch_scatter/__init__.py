"""Import-only placeholder for torch_scatter, for the GPU benchmark alone.

fairchem 1.10 imports ``torch_scatter`` at module level, and it cannot be
built on the GPU machines within their time budget. fairchem's EquiformerV2
forward never calls it, so the reference model runs with this module on the
path. Every function raises: if anything does call it, the benchmark fails
loudly instead of measuring something else. It lives only in
``benchmarks/gpu/placeholder`` and is put on ``PYTHONPATH`` only by
``benchmarks/gpu/run_gpu.sh``; the project itself uses the real package.
"""

__version__ = "0.0.0+placeholder"


def _not_available(name: str):
    def fail(*args, **kwargs):
        raise RuntimeError(
            f"torch_scatter.{name} was called, but this is the GPU benchmark's import-only placeholder "
            "(benchmarks/gpu/placeholder); install the real torch_scatter for this code path"
        )

    fail.__name__ = name
    return fail


scatter = _not_available("scatter")
scatter_add = _not_available("scatter_add")
scatter_sum = _not_available("scatter_sum")
scatter_mean = _not_available("scatter_mean")
scatter_max = _not_available("scatter_max")
scatter_min = _not_available("scatter_min")
segment_coo = _not_available("segment_coo")
segment_csr = _not_available("segment_csr")
