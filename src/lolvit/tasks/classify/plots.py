"""Matplotlib figures (Agg backend): training curves, confusion matrix, latency bars."""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: List[Dict[str, Any]], path, title: str = "") -> Path:
    """Loss and top-1 per epoch (train and val, EMA when present) -> PNG."""
    plt = _plt()
    ep = [int(r["epoch"]) for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [float(r["train_loss"]) for r in history], "o-", label="train")
    a.plot(ep, [float(r["val_loss"]) for r in history], "o-", label="val")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend(), a.grid(alpha=0.3)
    b.plot(ep, [float(r["train_top1"]) for r in history], "o-", label="train")
    b.plot(ep, [float(r["val_top1"]) for r in history], "o-", label="val")
    if "ema_val_top1" in history[0]:
        b.plot(ep, [float(r["ema_val_top1"]) for r in history], "o-", label="val (EMA)")
    b.set_xlabel("epoch"), b.set_ylabel("top-1 (%)"), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(confusion, classes: Sequence[str], path) -> Path:
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 2)))
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=6)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_demo(history: List[Dict[str, Any]], latency: Dict[int, Dict[str, float]], path,
              title: Optional[str] = None) -> Path:
    """Left: val accuracy per epoch; right: latency bars per model, one group per input size."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ep = [int(r["epoch"]) for r in history]
    a.plot(ep, [float(r["train_top1"]) for r in history], "o-", label="train")
    a.plot(ep, [float(r["val_top1"]) for r in history], "o-", label="test")
    a.set_xlabel("epoch"), a.set_ylabel("top-1 (%)"), a.legend(), a.grid(alpha=0.3)
    a.set_title(title or "accuracy")
    sizes = sorted(latency)
    names = list(latency[sizes[0]])
    width = 0.8 / len(sizes)
    for k, s in enumerate(sizes):
        xs = [i + (k - (len(sizes) - 1) / 2) * width for i in range(len(names))]
        b.bar(xs, [latency[s][n] for n in names], width, label=f"{s}x{s}")
    b.set_xticks(range(len(names)), names, rotation=15)
    b.set_ylabel("ms (batch 1, median)"), b.set_title("fused CPU latency"), b.legend(), b.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_compare(histories: Dict[str, List[List[Dict[str, Any]]]], path, title: str = "") -> Path:
    """Learning curves of several models in one figure: train loss and val top-1 per epoch,
    the mean over seeds as a line and the seeds' range shaded. ``histories``: label -> runs."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, runs in histories.items():
        n = min(len(h) for h in runs)
        ep = [int(runs[0][i]["epoch"]) for i in range(n)]
        for ax, key in ((a, "train_loss"), (b, "val_top1")):
            vals = [[float(h[i][key]) for h in runs] for i in range(n)]
            mean = [sum(v) / len(v) for v in vals]
            line, = ax.plot(ep, mean, "-", label=label)
            if len(runs) > 1:
                ax.fill_between(ep, [min(v) for v in vals], [max(v) for v in vals], color=line.get_color(), alpha=0.2)
    a.set_xlabel("epoch"), a.set_ylabel("train loss"), a.grid(alpha=0.3)
    b.set_xlabel("epoch"), b.set_ylabel("val top-1 (%)"), b.grid(alpha=0.3), b.legend(fontsize=8)
    tops = [float(h[-1]["val_top1"]) for runs in histories.values() for h in runs]
    if tops:
        b.set_ylim(max(0.0, min(tops) - 8), min(100.0, max(tops) + 2))
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
