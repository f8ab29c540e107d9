"""``lolvit bench fawa`` (paper Fig. 8): FAWA key generation against the pooling route at the
three hybrid layers (strides 8, 16, 32) for input sizes 224 to 1024."""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import MODEL_CONFIGS
from ..nn.functional import fawa, num_keys
from .report import header, machine_info, markdown_table, write_report
from .timing import median, time_interleaved

STRIDES = (8, 16, 32)
FULL = dict(sizes=(224, 320, 384, 512, 640, 768, 896, 1024), batch=1, warmup=3, repeats=15, budget_s=6.0)
QUICK = dict(sizes=(64, 128), batch=1, warmup=1, repeats=5, budget_s=0.5)


def fawa_route(x: Tensor, H: int, W: int, window: int = 1, fold: int = 1) -> Tensor:
    """FAWA keys straight from the sequence (Eq. 4): (B, H*W, C) -> (B, n, fold*C)."""
    return fawa(x, H, W, window, fold)


def pooling_route(x: Tensor, H: int, W: int, window: int = 1, fold: int = 1) -> Tensor:
    """The pooling route of Agent Attention: sequence -> feature map -> adaptive average pooling
    to one row of ceil(W / window) cells -> sequence, then Fold. (B, H*W, C) -> (B, n, fold*C).

    Equals :func:`fawa_route` divided by H (mean instead of sum), a scale that the key
    LayerNorm removes.
    """
    B, N, C = x.shape
    cells = (W + window - 1) // window
    fmap = x.transpose(1, 2).reshape(B, C, H, W)
    keys = F.adaptive_avg_pool2d(fmap, (1, cells)).flatten(2).transpose(1, 2)  # (B, cells, C)
    pad = (fold - cells % fold) % fold
    if pad:
        keys = F.pad(keys, (0, 0, 0, pad))
    return keys.reshape(B, -1, fold * C)


def run(
    sizes: Sequence[int] = FULL["sizes"],
    batch: int = FULL["batch"],
    variant: str = "lolvit_x",
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    seed: int = 0,
) -> Dict[str, Any]:
    """Time both routes on (batch, (size/s)^2, dim) tokens of ``variant``'s three LOLViT blocks
    (dims and folds of its config, window 1), interleaved; per-layer and total ratios."""
    if variant not in MODEL_CONFIGS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(MODEL_CONFIGS)}")
    cfg = MODEL_CONFIGS[variant]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads)
    rows: List[Dict[str, Any]] = []
    for size in sizes:
        fns = {}
        for layer, (stride, dim, fold) in enumerate(zip(STRIDES, cfg.dims, cfg.folds), 1):
            h = w = max(1, -(-int(size) // stride))
            x = torch.randn(batch, h * w, dim)
            a, b = fawa_route(x, h, w, 1, fold), pooling_route(x, h, w, 1, fold)
            same = torch.allclose(a, b * h, rtol=1e-4, atol=1e-4)  # column sum = H * column mean
            if not same or a.shape[1] != num_keys(w, 1, fold):
                raise RuntimeError(f"FAWA and pooling keys differ at size {size}, layer {layer}")
            fns[f"fawa{layer}"] = _call(fawa_route, x, h, w, fold)
            fns[f"pool{layer}"] = _call(pooling_route, x, h, w, fold)
            rows.append(dict(size=int(size), layer=layer, stride=stride, tokens=h * w, dim=dim, fold=fold))
        samples = time_interleaved(fns, warmup, repeats, budget_s)
        layer_rows = rows[-len(STRIDES):]
        for r in layer_rows:
            for route in ("fawa", "pool"):
                r[f"{route}_samples_us"] = [1e3 * s for s in samples[f"{route}{r['layer']}"]]
                r[f"{route}_us"] = median(r[f"{route}_samples_us"])
            r["speedup"] = r["pool_us"] / r["fawa_us"]
        total = dict(size=int(size), layer="total", stride="8+16+32",
                     fawa_us=sum(r["fawa_us"] for r in layer_rows), pool_us=sum(r["pool_us"] for r in layer_rows))
        total["speedup"] = total["pool_us"] / total["fawa_us"]
        rows.append(total)
    machine["load_avg_end"] = machine_info(threads)["load_avg"]
    return dict(bench="fawa", variant=variant, batch=batch, warmup=warmup, repeats=repeats,
                budget_s=budget_s, machine=machine, rows=rows)


def _call(route, x: Tensor, h: int, w: int, fold: int):
    def fn():
        with torch.inference_mode():
            return route(x, h, w, 1, fold)

    return fn


COLUMNS = [
    ("size", "size", ""), ("layer", "layer", ""), ("stride", "stride", ""), ("tokens", "tokens", ""),
    ("dim", "dim", ""), ("fold", "fold", ""), ("FAWA us", "fawa_us", ".1f"),
    ("pooling us", "pool_us", ".1f"), ("pooling / FAWA", "speedup", ".2f"),
]


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench fawa") -> Dict[str, Any]:
    rows = payload["rows"]
    md = header(f"FAWA vs pooling key generation ({payload['variant']} widths, batch {payload['batch']})",
                payload["machine"], command)
    md += ("\nKeys from (B, N, C) tokens at the three LOLViT blocks; 'total' = the sum of the three "
           "layers (paper Fig. 8). Median per call, both routes interleaved.\n\n")
    md += markdown_table(rows, COLUMNS)

    def plot(fig):
        tot = [r for r in rows if r["layer"] == "total"]
        ax = fig.add_subplot(1, 2, 1)
        ax.plot([r["size"] for r in tot], [r["fawa_us"] for r in tot], marker="o", label="FAWA")
        ax.plot([r["size"] for r in tot], [r["pool_us"] for r in tot], marker="s", label="pooling")
        ax.set_xlabel("input size (px)")
        ax.set_ylabel("time, 3 layers (us)")
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        ax.plot([r["size"] for r in tot], [r["speedup"] for r in tot], marker="o", color="k")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("input size (px)")
        ax.set_ylabel("pooling / FAWA time")

    paths = write_report(out_dir, "fawa", payload, md, plot)
    return dict(paths=paths, markdown=md)
