"""``lolvit bench attention`` (paper Fig. 4): every attention mechanism on one feature map,
alone and inside 1-4 stacked transformer layers ("Repeat"): wall time and peak memory."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..nn.attention import build_attention
from ..nn.blocks import TransformerLayer
from .report import header, machine_info, markdown_table, write_report
from .timing import median, peak_memory, time_interleaved

# (row name, attention, share the FAWA key cache between stacked layers)
MECHANISMS: List[Tuple[str, str, bool]] = [
    ("fwa", "fwa", True),
    ("fwa_nocache", "fwa", False),
    ("fwa_softmax", "fwa_softmax", True),
    ("mhsa", "mhsa", False),
    ("agent", "agent", False),
    ("ssa", "ssa", False),
]
FULL = dict(shape=(128, 96, 32, 32), repeats_layers=(1, 2, 3, 4), warmup=2, repeats=7, budget_s=20.0)
QUICK = dict(shape=(4, 32, 16, 16), repeats_layers=(1, 2), warmup=1, repeats=5, budget_s=1.0)


class AttentionStack(nn.Module):
    """``depth`` attention modules (``part='attention'``, residual ``x + attn(x)``) or transformer
    layers (``part='layer'``) chained on tokens, passing the FAWA key cache along when ``cache``.
    (B, N, dim) -> (B, N, dim)."""

    def __init__(self, attention: str, dim: int, heads: int, depth: int, part: str = "layer", cache: bool = True):
        super().__init__()
        if part not in ("attention", "layer"):
            raise ValueError(f"part must be 'attention' or 'layer', got {part!r}")
        if part == "layer":
            mods = [TransformerLayer(dim, attention, heads) for _ in range(depth)]
        else:
            mods = [build_attention(attention, dim, heads) for _ in range(depth)]
        self.part = part
        self.cache = cache
        self.mods = nn.ModuleList(mods)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        cache: Optional[Tensor] = None
        for m in self.mods:
            if self.part == "layer":
                x, keys = m(x, H, W, cache)
            else:
                a, keys = m(x, H, W, cache)
                x = x + a
            if self.cache:
                cache = keys
        return x


def run(
    shape: Sequence[int] = FULL["shape"],
    repeats_layers: Sequence[int] = FULL["repeats_layers"],
    mechanisms: Optional[Sequence[str]] = None,
    parts: Sequence[str] = ("attention", "layer"),
    heads: int = 4,
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    device: str = "cpu",
    seed: int = 0,
) -> Dict[str, Any]:
    """Measure every mechanism x part x depth on a (B, C, H, W) map, C = attention dim.

    Within one (part, depth) all mechanisms are timed interleaved; peak memory is measured in a
    separate call of each forward (no_grad, inference). Returns the bench payload (rows with raw
    samples, ``median_ms``, ``peak_mb``, ``time_vs_mhsa``, ``mem_vs_mhsa``).
    """
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, C, H, W), got {tuple(shape)}")
    B, C, H, W = (int(s) for s in shape)
    names = [m[0] for m in MECHANISMS]
    chosen = list(mechanisms) if mechanisms else names
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {unknown}; choose from {names}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads, device)
    x = torch.randn(B, C, H, W, device=device).flatten(2).transpose(1, 2).contiguous()  # (B, N, C)
    rows: List[Dict[str, Any]] = []
    for part in parts:
        for depth in repeats_layers:
            fns = {}
            for name, attention, cache in MECHANISMS:
                if name not in chosen:
                    continue
                m = AttentionStack(attention, C, heads, depth, part, cache).to(device).eval()
                fns[name] = _forward(m, x, H, W)
            samples = time_interleaved(fns, warmup, repeats, budget_s, device=device)
            group = []
            for name, fn in fns.items():
                row = dict(mechanism=name, part=part, repeat=depth, samples_ms=samples[name],
                           median_ms=median(samples[name]), peak_mb=peak_memory(fn, device) / 2**20)
                group.append(row)
            ref = next((r for r in group if r["mechanism"] == "mhsa"), None)
            for r in group:
                r["time_vs_mhsa"] = r["median_ms"] / ref["median_ms"] if ref else None
                r["mem_vs_mhsa"] = r["peak_mb"] / ref["peak_mb"] if ref and ref["peak_mb"] else None
            rows.extend(group)
    machine["load_avg_end"] = machine_info(threads, device)["load_avg"]
    return dict(bench="attention", shape=[B, C, H, W], heads=heads, tokens=H * W, device=device,
                warmup=warmup, repeats=repeats, budget_s=budget_s, machine=machine, rows=rows)


def _forward(model: nn.Module, x: Tensor, H: int, W: int):
    def fn():
        with torch.inference_mode():
            return model(x, H, W)

    return fn


COLUMNS = [
    ("mechanism", "mechanism", ""), ("part", "part", ""), ("repeat", "repeat", ""),
    ("median ms", "median_ms", ".2f"), ("x MHSA time", "time_vs_mhsa", ".3f"),
    ("peak MB", "peak_mb", ".1f"), ("x MHSA mem", "mem_vs_mhsa", ".3f"),
]


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench attention") -> Dict[str, Any]:
    """Write attention.json/.md/.png for a payload of :func:`run`."""
    rows = payload["rows"]
    md = header(f"Attention mechanisms on {payload['shape']} (tokens {payload['tokens']}, heads {payload['heads']})",
                payload["machine"], command)
    md += ("\n'attention' = the mechanism alone (x + attn(x)), 'layer' = pre-norm transformer layer "
           "with MLP; 'repeat' = stacked copies; FWA rows share the key cache across the stack "
           "except fwa_nocache. Median of the samples, interleaved; peak = measured allocations "
           "of one inference forward (torch.profiler).\n\n")
    md += markdown_table(rows, COLUMNS)

    def plot(fig):
        parts = sorted({r["part"] for r in rows})
        for i, part in enumerate(parts):
            for j, (key, label) in enumerate((("median_ms", "CPU time (ms)"), ("peak_mb", "peak memory (MB)"))):
                ax = fig.add_subplot(len(parts), 2, 2 * i + j + 1)
                for mech in dict.fromkeys(r["mechanism"] for r in rows):
                    pts = [(r["repeat"], r[key]) for r in rows if r["part"] == part and r["mechanism"] == mech]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mech)
                ax.set_title(f"{part}: {label}", fontsize=9)
                ax.set_xlabel("repeat", fontsize=8)
                ax.set_yscale("log")
                ax.tick_params(labelsize=7)
                if i == 0 and j == 0:
                    ax.legend(fontsize=6)

    paths = write_report(out_dir, "attention", payload, md, plot)
    return dict(paths=paths, markdown=md)
