"""CPU latency: batch-1 medians, several models measured interleaved in one process."""
import statistics
import time
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn as nn


@torch.no_grad()
def median_latency_ms(model: nn.Module, inputs: Sequence[torch.Tensor], warmup: int = 3) -> float:
    """Median wall time of ``model(x)`` over ``inputs`` (each (1, C, H, W)), after ``warmup`` calls."""
    for x in list(inputs)[:warmup]:
        model(x)
    times = []
    for x in inputs:
        t = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def interleaved_latency_ms(models: Dict[str, nn.Module], size: Tuple[int, int], repeats: int = 20,
                           warmup: int = 3, in_chans: int = 3) -> Dict[str, float]:
    """Median batch-1 latency (ms) per model; each round runs every model once, in rotating order,
    so load changes on a shared machine hit all models alike."""
    x = torch.randn(1, in_chans, *size)
    names = list(models)
    for _ in range(warmup):
        for n in names:
            models[n](x)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            models[n](x)
            times[n].append((time.perf_counter() - t) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def build_fused(names: Sequence[str], num_classes: int = 10, **kwargs) -> Dict[str, nn.Module]:
    """Fresh models (pretrained=False), BN folded with :func:`lolvit.fuse` where the model has
    ``.conv``/``.bn`` pairs; timm models keep their own structure, all in eval mode."""
    from ...nn.fuse import fuse
    from .train import build_model

    return {n: fuse(build_model(n, num_classes, **kwargs)).eval() for n in names}
