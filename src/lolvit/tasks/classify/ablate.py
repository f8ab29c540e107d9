"""``lolvit ablate``: the paper's ablation grids (Tables 9-14, 24) and an attention-mechanism grid,
trained with one recipe.

Each row is a variant of the base model (``--model``, default LOLViT-S; the paper's Tables 13/14
rows are LOLViT-X) given by constructor overrides merged over ``--model-kwargs``. Rows run through
:func:`.compare.run_variant`, so identical variants share one run folder across tables (and with
``lolvit compare`` into the same ``--out``), finished runs are reused and interrupted ones resumed.
Tables 13 and 14 add fused batch-1 CPU latency measured interleaved across their rows.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..summary import count_params
from .compare import Variant, run_variant, summarise
from .latency import interleaved_latency_ms
from .train import TrainConfig, build_model

BASE = None  # a row's model: the base model of the run (``--model``)
Row = Tuple[str, Optional[str], Dict[str, Any]]  # label, model (BASE or a fixed name), kwargs

_L = {"111": (1, 1, 1), "243": (2, 4, 3), "222": (2, 2, 2)}
GRIDS: Dict[str, Dict[str, Any]] = {
    "9": {"title": "Table 9: ReLu and its variants in DReLu", "latency": False,
          "rows": [(a, BASE, {"activation": a}) for a in ("relu", "leaky_relu", "relu6", "silu")]},
    "10": {"title": "Table 10: initial value of the learnable DP of DReLu", "latency": False,
           "rows": [(f"DP={v / 10:.1f}", BASE, {"attn_kwargs": {"dp_init": v / 10}}) for v in range(1, 11)]},
    "11": {"title": "Table 11: fusion of the global and local features", "latency": True,
           "rows": [("FeatureFusion", BASE, {"fusion": "feature_fusion"}),
                    ("MobileViT fusion", BASE, {"fusion": "mobilevit"})]},
    "12": {"title": "Table 12: heads per LOLViT block", "latency": False,
           "rows": [("-".join(map(str, h)), BASE, {"heads": h})
                    for h in ((2, 4, 6), (4, 6, 8), (4, 4, 4), (2, 2, 2), (6, 6, 6))]},
    "13": {"title": "Table 13: key cache (L-Fold-Patch)", "latency": True,
           "rows": [("243-124-111 (cache)", BASE, {"depths": (2, 4, 3), "cache": True}),
                    ("243-124-111", BASE, {"depths": (2, 4, 3), "cache": False}),
                    ("111-124-111", BASE, {"depths": (1, 1, 1), "cache": False})]},
    "14": {"title": "Table 14: attention x score function x fusion", "latency": True,
           "rows": [("GhostNet (ghostnet_100, no attention)", "ghostnet_100", {}),
                    ("MHSA + SoftMax + FeatureFusion", BASE, {"attention": "mhsa"}),
                    ("AA + SoftMax + FeatureFusion", BASE, {"attention": "agent"}),
                    ("FWA + SoftMax + FeatureFusion", BASE, {"attention": "fwa_softmax"}),
                    ("FWA + DReLu + MobileViT fusion", BASE, {"attention": "fwa", "fusion": "mobilevit"}),
                    ("FWA + DReLu + FeatureFusion", BASE, {"attention": "fwa"})]},
    "24": {"title": "Table 24: L / Fold / patch size", "latency": False,
           "rows": [(f"{l}-{''.join(map(str, f))}-{''.join(map(str, p))}", BASE,
                     {"depths": _L[l], "folds": f, "patches": p})
                    for l, f, p in (("243", (1, 2, 4), (1, 1, 1)), ("243", (1, 1, 1), (2, 2, 1)),
                                    ("222", (1, 2, 4), (2, 2, 1)), ("222", (1, 1, 1), (2, 1, 1)),
                                    ("111", (4, 2, 1), (2, 2, 1)), ("111", (2, 4, 8), (2, 2, 1)),
                                    ("111", (1, 2, 4), (2, 1, 1)), ("111", (1, 2, 4), (1, 1, 1)))]},
    "attention": {"title": "Attention mechanism in the LOLViT blocks (Tables 2, 14)", "latency": True,
                  "rows": [(a, BASE, {"attention": a}) for a in ("fwa", "fwa_softmax", "mhsa", "agent", "ssa")]},
}


def grid_variants(table: str, base: TrainConfig, rows: Optional[int] = None) -> List[Variant]:
    """The rows of ``table`` as variants of ``base.model`` with ``base.model_kwargs`` underneath."""
    if table not in GRIDS:
        raise ValueError(f"unknown ablation table {table!r}; choose from {list(GRIDS)}")
    grid_rows: List[Row] = GRIDS[table]["rows"][:rows] if rows else GRIDS[table]["rows"]
    out = []
    for label, model, kwargs in grid_rows:
        if model is BASE:
            merged = {**base.model_kwargs, **kwargs}
            if "attn_kwargs" in kwargs and "attn_kwargs" in base.model_kwargs:
                merged["attn_kwargs"] = {**base.model_kwargs["attn_kwargs"], **kwargs["attn_kwargs"]}
            out.append(Variant(label, base.model, _canonical(merged)))
        else:
            out.append(Variant(label, model, dict(kwargs)))
    return out


def _canonical(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Drop overrides equal to the model's defaults, so the default row shares its run."""
    from ...models import LOLViTConfig

    defaults = LOLViTConfig(channels=(), dims=(0, 0, 0)).to_dict()
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return {k: v for k, v in kwargs.items() if not (k in defaults and norm(defaults[k]) == norm(v))}


def run_ablation(tables: Sequence[str], base: TrainConfig, out: str, rows: Optional[int] = None,
                 seeds: Sequence[int] = (0,), train_missing: bool = True, latency_repeats: int = 20) -> Dict[str, str]:
    """Train (or reuse) every row of each named table for every seed; returns {table: markdown}.

    Each table is written to ``out/table<N>.md``."""
    for t in tables:
        grid_variants(t, base)  # unknown names fail before any training
    o = Path(out)
    results = {}
    for t in tables:
        grid = GRIDS[t]
        variants = grid_variants(t, base, rows)
        summaries: List[Optional[Dict[str, Any]]] = []
        for v in variants:
            hists = [h for h in (run_variant(v, base, o, s, train_missing) for s in seeds) if h]
            summaries.append(summarise(hists) if hists else None)
        lat = None
        if grid["latency"]:
            from ...nn.fuse import fuse

            nets = {v.label: fuse(build_model(v.model, 10, **v.kwargs)).eval() for v in variants}
            lat = (interleaved_latency_ms(nets, (base.img_size, base.img_size), repeats=latency_repeats)
                   if latency_repeats > 0 else None)
        md = format_table(grid["title"], variants, summaries, lat, base, seeds)
        o.mkdir(parents=True, exist_ok=True)
        (o / f"table{t}.md").write_text(md)
        print(md, flush=True)
        results[t] = md
    return results


def format_table(title: str, variants: List[Variant], summaries: List[Optional[Dict[str, Any]]],
                 lat: Optional[Dict[str, float]], cfg: TrainConfig, seeds: Sequence[int]) -> str:
    head = "| variant | params (M) | top-1 (%) mean | spread | per seed |" + (" latency (ms) |" if lat else "")
    lines = [f"## {title}", "", head, "|---|---:|---:|---:|---|" + ("---:|" if lat else "")]
    for v, s in zip(variants, summaries):
        params = count_params(build_model(v.model, 10, **v.kwargs)) / 1e6
        cell = f" {lat[v.label]:.2f} |" if lat else ""
        if s is None:
            lines.append(f"| {v.label} | {params:.2f} | not trained | | |{cell}")
            continue
        lines.append(f"| {v.label} | {params:.2f} | {s['top1_mean']:.2f} | {s['top1_spread']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in s['top1'])} |{cell}")
    subset = f"{cfg.train_subset} train images" if cfg.train_subset else "full train split"
    vsub = f"{cfg.val_subset} val images" if cfg.val_subset else "full val split"
    lines += ["", f"base model {cfg.model} {cfg.model_kwargs or ''}; recipe {cfg.recipe}: data {cfg.data} ({subset}, "
              f"{vsub}), {cfg.img_size} px, {cfg.epochs} epochs, {cfg.opt} lr {cfg.lr or 'default'}, batch "
              f"{cfg.batch_size}; seeds {list(seeds)}; spread = max - min over seeds"
              + ("; latency: fused, batch 1, median of interleaved rounds, 10-class head" if lat else ""), ""]
    return "\n".join(lines)
