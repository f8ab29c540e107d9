"""``lolvit bench scaling``: time and peak memory of each attention (at the stride-8 LOLViT
block) and of whole models against input size, and the fitted exponent of time against the
token count (time ~ N^k)."""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..models import MODEL_CONFIGS
from .attention import AttentionStack
from .models import build_model
from .report import header, machine_info, markdown_table, write_report
from .timing import median, peak_memory, time_interleaved

FULL = dict(sizes=(224, 320, 448, 640, 832, 1024), mechanisms=("fwa", "fwa_softmax", "mhsa", "agent", "ssa"),
            models=("lolvit_s", "lolvit_x", "mobilevit_xs", "mobilevit_xs+fwa", "ghostnet_100"),
            warmup=1, repeats=5, budget_s=20.0)
QUICK = dict(sizes=(64, 96, 128), mechanisms=("fwa", "mhsa", "ssa"), models=("lolvit_s", "mobilevit_xxs"),
             warmup=1, repeats=3, budget_s=1.0)


def fit_exponent(tokens: Sequence[float], times: Sequence[float]) -> Optional[float]:
    """Least-squares slope k of log(time) = k log(tokens) + c; None with < 2 distinct sizes."""
    if len(set(tokens)) < 2:
        return None
    return float(np.polyfit(np.log(np.asarray(tokens, float)), np.log(np.asarray(times, float)), 1)[0])


def run(
    sizes: Sequence[int] = FULL["sizes"],
    mechanisms: Sequence[str] = FULL["mechanisms"],
    models: Sequence[str] = FULL["models"],
    variant: str = "lolvit_x",
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    seed: int = 0,
) -> Dict[str, Any]:
    """Attention: batch 1, (size/8)^2 tokens of ``variant``'s first LOLViT block width and heads,
    one attention module; models: batch 1, eager (LOLViT fused). Per size, everything is timed
    interleaved; peak memory of one inference forward. Exponents fitted over all sizes and over
    the largest three (``exponent_tail``, closer to the asymptote)."""
    if variant not in MODEL_CONFIGS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(MODEL_CONFIGS)}")
    from ..nn.fuse import fuse

    cfg = MODEL_CONFIGS[variant]
    dim, heads = cfg.dims[0], cfg.heads[0]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads)
    nets = {}
    for name in models:
        m = build_model(name)
        nets[name] = fuse(m) if name.startswith("lolvit") else m
    attns = {name: AttentionStack(name, dim, heads, 1, "attention").eval() for name in mechanisms}
    rows: List[Dict[str, Any]] = []
    for size in sizes:
        h = w = -(-int(size) // 8)
        tokens = torch.randn(1, h * w, dim)
        image = torch.randn(1, 3, size, size)
        fns = {}
        for name, a in attns.items():
            fns[("attention", name)] = _call(a, tokens, h, w)
        for name, m in nets.items():
            fns[("model", name)] = _call(m, image)
        samples = time_interleaved(fns, warmup, repeats, budget_s)
        for (kind, name), fn in fns.items():
            rows.append(dict(kind=kind, name=name, size=int(size), tokens=h * w, samples_ms=samples[(kind, name)],
                             median_ms=median(samples[(kind, name)]), peak_mb=peak_memory(fn) / 2**20))
    fits = []
    for kind, names in (("attention", mechanisms), ("model", models)):
        for name in names:
            pts = sorted((r["tokens"], r["median_ms"], r["peak_mb"]) for r in rows
                         if r["kind"] == kind and r["name"] == name)
            tail = pts[-3:]
            fits.append(dict(kind=kind, name=name,
                             exponent=fit_exponent([p[0] for p in pts], [p[1] for p in pts]),
                             exponent_tail=fit_exponent([p[0] for p in tail], [p[1] for p in tail]),
                             mem_exponent=fit_exponent([p[0] for p in pts], [p[2] for p in pts])))
    machine["load_avg_end"] = machine_info(threads)["load_avg"]
    return dict(bench="scaling", variant=variant, dim=dim, heads=heads, warmup=warmup, repeats=repeats,
                budget_s=budget_s, machine=machine, rows=rows, fits=fits)


def _call(module, *args):
    def fn():
        with torch.inference_mode():
            return module(*args)

    return fn


COLUMNS = [("kind", "kind", ""), ("name", "name", ""), ("size", "size", ""), ("tokens (/8)", "tokens", ""),
           ("median ms", "median_ms", ".2f"), ("peak MB", "peak_mb", ".1f")]
FIT_COLUMNS = [("kind", "kind", ""), ("name", "name", ""), ("time exponent (all sizes)", "exponent", ".2f"),
               ("time exponent (largest 3)", "exponent_tail", ".2f"), ("memory exponent", "mem_exponent", ".2f")]


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench scaling") -> Dict[str, Any]:
    rows, fits = payload["rows"], payload["fits"]
    md = header(f"Scaling with input size (attention: dim {payload['dim']}, heads {payload['heads']}, "
                f"stride-8 tokens, batch 1)", payload["machine"], command)
    md += ("\nFitted time ~ tokens^k (least squares in log-log; tokens = (size/8)^2 for both kinds). "
           "Models: batch 1, LOLViT fused, timm eager.\n\n")
    md += markdown_table(fits, FIT_COLUMNS) + "\n\n" + markdown_table(rows, COLUMNS)

    def plot(fig):
        for i, (kind, key, label) in enumerate((("attention", "median_ms", "attention time (ms)"),
                                                ("attention", "peak_mb", "attention peak memory (MB)"),
                                                ("model", "median_ms", "model time (ms)"))):
            ax = fig.add_subplot(1, 3, i + 1)
            for name in dict.fromkeys(r["name"] for r in rows if r["kind"] == kind):
                pts = [(r["tokens"], r[key]) for r in rows if r["kind"] == kind and r["name"] == name]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("tokens at stride 8", fontsize=7)
            ax.set_title(label, fontsize=8)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=5)

    paths = write_report(out_dir, "scaling", payload, md, plot)
    return dict(paths=paths, markdown=md)
