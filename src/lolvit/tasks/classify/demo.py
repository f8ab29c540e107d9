"""``lolvit demo``: train LOLViT-S on the embedded digits, then compare fused CPU latency side by side."""
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from ..summary import count_params
from .latency import build_fused, interleaved_latency_ms
from .train import TrainConfig, train

DEMO_MODELS = ("lolvit_s", "lolvit_x", "mobilevit_xxs", "mobilevit_xs")
TARGET_TOP1 = 95.0


def demo_config(out: Path, quick: bool, threads: int, seed: int, progress: bool) -> TrainConfig:
    """The shipped ``digits`` recipe (AdamW, cosine with one warm-up epoch, mild crops, no flips)."""
    cfg = TrainConfig.from_recipe("digits", model="lolvit_s", out=str(out / "train"), seed=seed, threads=threads,
                                  exist_ok=True, progress=progress, tensorboard=False)
    if quick:
        cfg.epochs, cfg.train_subset, cfg.val_subset = 1, 128, 64
    return cfg


def run_demo(out: str = "runs/demo", quick: bool = False, threads: Optional[int] = None, seed: int = 0,
             sizes: Sequence[int] = (64, 224), repeats: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Train, report test top-1, measure latency of :data:`DEMO_MODELS`; writes ``report.md`` and ``demo.png``.

    ``quick`` trains 1 epoch on 128 images (a smoke test: no accuracy target)."""
    t_start = time.perf_counter()
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(o, quick, threads, seed, progress)
    print(f"lolvit demo: training {cfg.model} on scikit-learn digits (upscaled 8->{cfg.img_size} px), "
          f"{cfg.epochs} epochs, {threads} CPU threads", flush=True)
    t0 = time.perf_counter()
    last = train(cfg)
    train_s = time.perf_counter() - t0
    history = _read_history(Path(cfg.out) / "results.csv")
    top1 = float(last["val_top1"])
    print(f"test accuracy: {top1:.2f}% top-1 ({last['val_top5']:.2f}% top-5) after {cfg.epochs} epochs, "
          f"{train_s:.0f} s", flush=True)

    repeats = repeats or (3 if quick else 25)
    models = build_fused(DEMO_MODELS, num_classes=10)
    latency = {}
    for s in sizes:
        print(f"measuring batch-1 latency at {s}x{s} ({repeats} interleaved rounds, fused, eval)...", flush=True)
        latency[s] = interleaved_latency_ms(models, (s, s), repeats=repeats, warmup=1 if quick else 3)
    params = {n: count_params(m) for n, m in models.items()}
    table = format_latency_table(latency, params, threads)
    print(table)

    from .plots import plot_demo

    png = plot_demo(history, latency, o / "demo.png", title=f"lolvit_s on digits ({cfg.img_size} px)")
    total_s = time.perf_counter() - t_start
    passed = top1 >= TARGET_TOP1
    report = [
        "# lolvit demo", "",
        f"- task: scikit-learn digits (8x8, upscaled to {cfg.img_size} px), fixed stratified split "
        f"(random_state=0): {last['train_images']} train / {last['val_images']} test images"
        + (" (quick smoke run)" if quick else ""),
        f"- model: lolvit_s, {cfg.epochs} epochs, AdamW lr {cfg.lr}, batch {cfg.batch_size}, seed {seed}, "
        f"{threads} CPU threads",
        f"- test top-1: **{top1:.2f}%** (target {TARGET_TOP1:.0f}%: {'met' if passed else 'NOT met'}); "
        f"top-5 {last['val_top5']:.2f}%",
        f"- training time {train_s:.0f} s; whole demo {total_s:.0f} s", "",
        "| epoch | train loss | train top-1 (%) | test loss | test top-1 (%) |", "|---:|---:|---:|---:|---:|",
    ]
    report += [f"| {r['epoch']} | {float(r['train_loss']):.4f} | {float(r['train_top1']):.2f} | "
               f"{float(r['val_loss']):.4f} | {float(r['val_top1']):.2f} |" for r in history]
    report += ["", "## CPU latency", "", table, "", f"![accuracy and latency]({png.name})", ""]
    (o / "report.md").write_text("\n".join(report))
    print(f"wrote {o / 'report.md'} and {png} ({total_s:.0f} s in all)")
    return {"top1": top1, "top5": float(last["val_top5"]), "latency_ms": latency, "params": params,
            "train_seconds": train_s, "total_seconds": total_s, "passed": passed, "report": str(o / "report.md")}


def default_threads() -> int:
    """Two threads (the target machine has 2 cores), one when the machine is already busy: oversubscribed
    OpenMP threads slow training down by an order of magnitude."""
    cpus = os.cpu_count() or 1
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > max(cpus - 1, 0.5)
    n = 1 if busy else min(2, cpus)
    if busy:
        print(f"note: load average {os.getloadavg()[0]:.1f} on {cpus} CPUs, using 1 thread (--threads overrides)")
    return n


def format_latency_table(latency: Dict[int, Dict[str, float]], params: Dict[str, int], threads: int) -> str:
    sizes = sorted(latency)
    ref = next(iter(params))
    head = "| model | params (M) | " + " | ".join(f"{s}x{s} ms | vs {ref}" for s in sizes) + " |"
    lines = [head, "|---|---:|" + "---:|---:|" * len(sizes)]
    for n in params:
        cells = " | ".join(f"{latency[s][n]:.2f} | {latency[s][n] / latency[s][ref]:.2f}x" for s in sizes)
        lines.append(f"| {n} | {params[n] / 1e6:.2f} | {cells} |")
    lines.append("")
    lines.append(f"batch 1, median of interleaved rounds, conv+BN folded with lolvit.fuse where the model has "
                 f".conv/.bn pairs (timm models otherwise as-is), eval mode, 10 classes, {threads} threads")
    return "\n".join(lines)


def _read_history(path: Path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))
