"""Measurement primitives: wall time (median of repeated runs after warm-up) and the measured
peak memory of one call.

Timings of several callables are interleaved round-robin so that machine noise (a shared CPU)
hits all of them alike; compare them as ratios of medians from one run.
"""
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def calibrate(fn: Callable[[], object], min_sample_s: float = 0.01, device: str = "cpu") -> int:
    """Number of calls whose total time is at least ``min_sample_s`` (one call is one warm-up)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, int(min_sample_s / once + 0.999))


def time_interleaved(
    fns: Dict[str, Callable[[], object]],
    warmup: int = 2,
    repeats: int = 10,
    budget_s: Optional[float] = None,
    min_repeats: int = 3,
    min_sample_s: float = 0.01,
    device: str = "cpu",
    pool_warmup: int = 8,
) -> Dict[str, List[float]]:
    """Wall time in ms per call of each callable: ``{name: [sample, ...]}``.

    First :func:`spin_up_thread_pool` runs ``pool_warmup`` matmuls (0: none) so torch's
    intra-op pool is up at the configured thread count before anything is timed. Each callable
    is warmed up ``warmup`` times; then rounds run every callable once (a sample is the mean of
    ``inner`` back-to-back calls, ``inner`` chosen so a sample lasts at least ``min_sample_s``).
    Rounds stop after ``repeats``, or once ``budget_s`` seconds are spent and every callable has
    ``min_repeats`` samples. CUDA work is synchronised.
    """
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup}, {repeats}")
    if pool_warmup:
        spin_up_thread_pool(pool_warmup)
    inner = {}
    for name, fn in fns.items():
        for _ in range(max(warmup - 1, 0)):
            fn()
        inner[name] = calibrate(fn, min_sample_s, device)
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(repeats):
        for name, fn in fns.items():
            n = inner[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            samples[name].append(1e3 * (time.perf_counter() - t0) / n)
        if budget_s is not None and r + 1 >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return samples


def spin_up_thread_pool(matmuls: int = 8, size: int = 256) -> None:
    """``matmuls`` products of a ``size`` x ``size`` tensor: they start torch's intra-op threads
    at ``torch.get_num_threads()``, so the first timed call does not pay for the pool's start."""
    a = torch.randn(size, size)
    for _ in range(matmuls):
        a @ a


def warm_thread_pool(seconds: float = 1.0) -> None:
    """Run small matmuls for ``seconds``: a fresh process times its first parallel ops far too
    slow until the OpenMP pool is up and the CPU clocks have settled."""
    a = torch.randn(128, 128)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a


def median(samples: List[float]) -> float:
    return float(statistics.median(samples))


def peak_memory_cpu(fn: Callable[[], object]) -> int:
    """Peak bytes of CPU tensor memory allocated during one call of ``fn`` (measured).

    Replays the allocation/free events that ``torch.profiler`` records (``profile_memory``)
    in time order; memory that was live before the call (inputs, weights) is not counted,
    the returned output is.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if e.device_type() != DeviceType.CPU:
            continue
        live += e.nbytes()
        peak = max(peak, live)
    del out
    return int(peak)


def peak_memory_cuda(fn: Callable[[], object]) -> int:
    """``torch.cuda.max_memory_allocated`` during one call, minus what was allocated before."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    return peak_memory_cuda(fn) if device.startswith("cuda") else peak_memory_cpu(fn)
