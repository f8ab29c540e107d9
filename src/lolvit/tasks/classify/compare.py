"""``lolvit compare``: several models (or variants) trained with one recipe and several seeds.

Each (model, constructor kwargs, seed) trains in its own run folder ``OUT/runs/<name>-s<seed>``,
which makes the command resumable (finished runs are reused, interrupted ones resumed) and lets
:mod:`.ablate` tables share runs with it. The table holds params, GFLOPs and fused batch-1 CPU
latency at the recipe's image size (all models measured interleaved in one process) next to
top-1 as mean and spread over seeds; the learning curves of all models go into one PNG.
"""
import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..summary import count_flops, count_params
from .latency import interleaved_latency_ms
from .train import TrainConfig, build_model, is_run_dir, read_train_state, train


@dataclass
class Variant:
    """One row: a label, a model name and constructor overrides."""

    label: str
    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def run_name(self) -> str:
        return self.model + "".join(f"-{k}={_flat(v)}" for k, v in sorted(_items(self.kwargs)))


def _items(d: Dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _items(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _flat(v: Any) -> str:
    text = "-".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)


def run_variant(variant: Variant, base: TrainConfig, out: Path, seed: int,
                train_missing: bool = True) -> Optional[List[Dict[str, Any]]]:
    """History rows of ``variant`` trained with ``base`` and ``seed`` in its run folder under ``out``:
    reused when finished, resumed when interrupted, trained when missing (``train_missing``)."""
    run = Path(out) / "runs" / f"{variant.run_name()}-s{seed}"
    cfg = replace(base, model=variant.model, model_kwargs=dict(variant.kwargs), seed=seed, out=str(run),
                  resume=False, exist_ok=False)
    if is_run_dir(run):
        _, state = read_train_state(run)
        if state["epoch"] >= state["epochs"] and state["epochs"] == base.epochs:
            return state["history"]
        cfg = replace(cfg, resume=True)
    if not train_missing:
        return None
    print(f"[{variant.label}] seed {seed}: {'resuming' if cfg.resume else 'training'} {variant.model} "
          f"{variant.kwargs or ''} in {run}", flush=True)
    res = train(cfg)
    if res.get("interrupted"):
        raise KeyboardInterrupt(f"interrupted; rerun the same command to resume {run}")
    return read_train_state(run)[1]["history"]


def summarise(histories: Sequence[List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Top-1 of the last epoch per seed, mean and spread (max - min)."""
    finals = [float(h[-1]["val_top1"]) for h in histories]
    return {"top1": finals, "top1_mean": statistics.fmean(finals), "top1_spread": max(finals) - min(finals),
            "train_s": [sum(float(r.get("epoch_s", 0.0)) for r in h) for h in histories],
            "img_s": statistics.fmean(statistics.median(float(r["train_img_s"]) for r in h) for h in histories)}


def compare(models: Sequence[str], base: TrainConfig, out: str, seeds: Sequence[int] = (0,),
            train_missing: bool = True, latency_repeats: int = 30,
            variants: Optional[Sequence[Variant]] = None, title: Optional[str] = None) -> Dict[str, Any]:
    """Train (or reuse) every model/variant for every seed, then write ``compare.md``,
    ``compare.json`` and ``curves.png`` into ``out``; returns the table data."""
    import torch

    o = Path(out)
    rows = list(variants) if variants is not None else [Variant(m, m) for m in models]
    if not rows or not seeds:
        raise ValueError("compare needs at least one model and one seed")
    results: Dict[str, Dict[str, Any]] = {}
    for v in rows:
        hists = [run_variant(v, base, o, s, train_missing) for s in seeds]
        done = [h for h in hists if h]
        if done:
            results[v.label] = {"variant": v, "histories": done, **summarise(done)}
    if not results:
        raise ValueError(f"no finished runs in {o / 'runs'} (run without --no-train first)")
    size = (base.img_size, base.img_size)
    from ...nn.fuse import fuse

    nets = {k: fuse(build_model(r["variant"].model, 10, **r["variant"].kwargs)).eval() for k, r in results.items()}
    latency = interleaved_latency_ms(nets, size, repeats=latency_repeats) if latency_repeats > 0 else dict.fromkeys(nets)
    for k, r in results.items():
        r.update(params=count_params(nets[k]), gflops=count_flops(nets[k], size)[0] / 1e9, latency_ms=latency[k],
                 seeds=len(r["histories"]))
    md = format_compare(results, base, seeds, torch.get_num_threads(), title)
    o.mkdir(parents=True, exist_ok=True)
    (o / "compare.md").write_text(md)
    data = {k: {kk: vv for kk, vv in r.items() if kk not in ("variant", "histories")}
            | {"model": r["variant"].model, "kwargs": r["variant"].kwargs} for k, r in results.items()}
    (o / "compare.json").write_text(json.dumps({"recipe": base.recipe_dict(), "seeds": list(seeds), "rows": data},
                                               indent=2))
    from .plots import plot_compare

    plot_compare({k: r["histories"] for k, r in results.items()}, o / "curves.png",
                 title=title or f"{base.data}, {base.img_size} px, recipe {base.recipe}")
    print(md, flush=True)
    return data


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_compare(results: Dict[str, Dict[str, Any]], base: TrainConfig, seeds: Sequence[int], threads: int,
                   title: Optional[str] = None) -> str:
    lines = [f"## {title or 'Comparison'}", "",
             f"| model | params (M) | GFLOPs {base.img_size} px | latency (ms) | top-1 (%) mean | spread | per seed | "
             "train img/s | train time (min) |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for k, r in results.items():
        lines.append(f"| {k} | {r['params'] / 1e6:.2f} | {r['gflops']:.3f} | {_ms(r['latency_ms'])} | "
                     f"{r['top1_mean']:.2f} | {r['top1_spread']:.2f} | {', '.join(f'{t:.2f}' for t in r['top1'])} | "
                     f"{r['img_s']:.0f} | {statistics.fmean(r['train_s']) / 60:.1f} |")
    lines += ["", f"recipe {base.recipe} ({base.data}, {base.img_size} px, {base.epochs} epochs, {base.opt}, "
              f"batch {base.batch_size}); seeds {list(seeds)}; top-1 of the last epoch on the full val split; spread = "
              f"max - min over seeds. Latency: lolvit.fuse (conv+BN folded), eval, batch 1, {threads} threads, median "
              "of interleaved rounds in one process, 10-class head. GFLOPs: 2 x multiply-adds by "
              "torch.utils.flop_counter on one forward. Train img/s: median over epochs of the run's own log "
              "(machine shared with other jobs: indicative only).", ""]
    return "\n".join(lines)
