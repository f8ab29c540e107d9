"""``lolvit ablate``: the paper's ablation grids (Tables 9, 10, 12, 13, 14, 24) on a reduced schedule.

Each row is a LOLViT variant (model name + constructor overrides) trained with the same
:class:`TrainConfig`; the table reports last-epoch val top-1, parameters and, for Tables 13 and 14,
fused batch-1 CPU latency measured interleaved across the table's rows.
"""
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..summary import count_params
from .latency import interleaved_latency_ms
from .train import TrainConfig, build_model, train

Row = Tuple[str, str, Dict[str, Any]]  # label, model name, model kwargs

_L = {"111": (1, 1, 1), "243": (2, 4, 3), "222": (2, 2, 2)}
GRIDS: Dict[str, Dict[str, Any]] = {
    "9": {"title": "Table 9: ReLu and its variants in DReLu", "latency": False,
          "rows": [(a, "lolvit_s", {"activation": a}) for a in ("relu", "leaky_relu", "relu6", "silu")]},
    "10": {"title": "Table 10: initial value of the learnable DP of DReLu", "latency": False,
           "rows": [(f"DP={v / 10:.1f}", "lolvit_s", {"attn_kwargs": {"dp_init": v / 10}}) for v in range(1, 11)]},
    "12": {"title": "Table 12: heads per LOLViT block", "latency": False,
           "rows": [("-".join(map(str, h)), "lolvit_s", {"heads": h})
                    for h in ((2, 4, 6), (4, 6, 8), (4, 4, 4), (2, 2, 2), (6, 6, 6))]},
    "13": {"title": "Table 13: key cache (L-Fold-Patch)", "latency": True,
           "rows": [("243-124-111 (cache)", "lolvit_s", {"depths": (2, 4, 3), "cache": True}),
                    ("243-124-111", "lolvit_s", {"depths": (2, 4, 3), "cache": False}),
                    ("111-124-111", "lolvit_s", {"depths": (1, 1, 1), "cache": False})]},
    "14": {"title": "Table 14: attention x score function x fusion", "latency": True,
           "rows": [("GhostNet (ghostnet_100, no attention)", "ghostnet_100", {}),
                    ("MHSA + SoftMax + FeatureFusion", "lolvit_s", {"attention": "mhsa"}),
                    ("AA + SoftMax + FeatureFusion", "lolvit_s", {"attention": "agent"}),
                    ("FWA + SoftMax + FeatureFusion", "lolvit_s", {"attention": "fwa_softmax"}),
                    ("FWA + DReLu + MobileViT fusion", "lolvit_s", {"attention": "fwa", "fusion": "mobilevit"}),
                    ("FWA + DReLu + FeatureFusion", "lolvit_s", {"attention": "fwa"})]},
    "24": {"title": "Table 24: L / Fold / patch size", "latency": False,
           "rows": [(f"{l}-{''.join(map(str, f))}-{''.join(map(str, p))}", "lolvit_s",
                     {"depths": _L[l], "folds": f, "patches": p})
                    for l, f, p in (("243", (1, 2, 4), (1, 1, 1)), ("243", (1, 1, 1), (2, 2, 1)),
                                    ("222", (1, 2, 4), (2, 2, 1)), ("222", (1, 1, 1), (2, 1, 1)),
                                    ("111", (4, 2, 1), (2, 2, 1)), ("111", (2, 4, 8), (2, 2, 1)),
                                    ("111", (1, 2, 4), (2, 1, 1)), ("111", (1, 2, 4), (1, 1, 1)))]},
}


def run_ablation(tables: List[str], base: TrainConfig, out: str, rows: Optional[int] = None,
                 latency_repeats: int = 20) -> Dict[str, str]:
    """Train every row of each named table with ``base`` (model overridden); returns {table: markdown}.

    Each table is written to ``out/table<N>.md``; finished rows are reused when re-run (``--resume``-like)."""
    unknown = [t for t in tables if t not in GRIDS]
    if unknown:
        raise ValueError(f"unknown ablation table(s) {unknown}; choose from {sorted(GRIDS, key=int)}")
    o = Path(out)
    results = {}
    for t in tables:
        grid = GRIDS[t]
        grid_rows: List[Row] = grid["rows"][:rows] if rows else grid["rows"]
        metrics = []
        for label, model, kwargs in grid_rows:
            run_dir = o / f"table{t}" / _slug(label)
            cfg = replace(base, model=model, model_kwargs=dict(kwargs), out=str(run_dir), resume=False, exist_ok=True)
            print(f"[table {t}] {label}: training {model} {kwargs}", flush=True)
            metrics.append(train(cfg))
        lat = None
        if grid["latency"]:
            from ...nn.fuse import fuse

            models = {label: fuse(build_model(m, 10, **kw)).eval() for label, m, kw in grid_rows}
            lat = interleaved_latency_ms(models, (base.img_size, base.img_size), repeats=latency_repeats)
        md = format_table(grid["title"], grid_rows, metrics, lat, base)
        o.mkdir(parents=True, exist_ok=True)
        (o / f"table{t}.md").write_text(md)
        print(md, flush=True)
        results[t] = md
    return results


def format_table(title: str, rows: List[Row], metrics: List[Dict[str, Any]], lat: Optional[Dict[str, float]],
                 cfg: TrainConfig) -> str:
    head = "| variant | params (M) | top-1 (%) |" + (" latency (ms) |" if lat else "")
    lines = [f"## {title}", "", head, "|---|---:|---:|" + ("---:|" if lat else "")]
    for (label, model, kw), m in zip(rows, metrics):
        params = count_params(build_model(model, 10, **kw)) / 1e6
        cell = f" {lat[label]:.2f} |" if lat else ""
        lines.append(f"| {label} | {params:.2f} | {float(m['val_top1']):.2f} |{cell}")
    subset = f"{cfg.train_subset} train images" if cfg.train_subset else "full train split"
    vsub = f"{cfg.val_subset} val images" if cfg.val_subset else "full val split"
    lines += ["", f"data {cfg.data} ({subset}, {vsub}), {cfg.img_size} px, {cfg.epochs} epochs, {cfg.opt} "
              f"lr {cfg.lr or 'default'}, batch {cfg.batch_size}, seed {cfg.seed}"
              + ("; latency: fused, batch 1, median of interleaved rounds, 10-class head" if lat else ""), ""]
    return "\n".join(lines)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")
