"""Per-module parameter and FLOP table in the style of the paper's Tables 16/17."""
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..models import LOLViT
from ..nn.attention import per_head_products

# Parameter counts of the paper's Tables 16 (S) and 17 (X), one per row, stem first.
PAPER_ROWS = {
    "lolvit_s": [464, 2448, 6872, 6696, 17208, 163927, 30288, 295703, 60528, 472535],
    "lolvit_x": [928, 3440, 8160, 10976, 30288, 269943, 60528, 468439, 109728, 900279],
}
PAPER_TOTALS = {"lolvit_s": 1056669, "lolvit_x": 1862709}


@dataclass
class Row:
    name: str
    module: str
    c_in: int
    c_out: int
    stride: int
    params: int
    flops: int
    paper: Optional[int] = None


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_flops(model: nn.Module, size: Tuple[int, int], in_chans: int = 3) -> Tuple[int, dict]:
    """Total FLOPs of one forward at batch 1 (2 per multiply-add, torch.utils.flop_counter) and
    per-module counts.

    FWA is counted per head, as the algorithm computes it (Eqs. 2-3: 2 x h*N*n*D per product), not
    with the zero blocks of the block-diagonal kernel that the fast path multiplies (h times more).
    """
    x = torch.zeros(1, in_chans, *size)
    with torch.no_grad(), per_head_products(model), FlopCounterMode(display=False) as counter:
        model(x)
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


def backbone_rows(model: LOLViT, variant: Optional[str], size: Tuple[int, int]) -> List[Row]:
    """One row per stem/GhostNetBlock/LOLViTBlock, matching the paper's tables."""
    was_training = model.training
    model.eval()
    _, flops = count_flops(model, size, model.in_chans)
    model.train(was_training)
    root = type(model).__name__
    paper = PAPER_ROWS.get(variant or "", [])
    rows = [Row("Conv", "stem", model.in_chans, model.stem.conv.out_channels, 2,
                count_params(model.stem), flops.get(f"{root}.stem", 0))]
    stride = 2
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            path = f"stages.{i}.{j}"
            kind = type(block).__name__
            if kind == "GhostNetBlock":
                c_in = block.ghost1.primary.conv.in_channels
                c_out = block.ghost2.primary.conv.out_channels * 2
                s = 2 if not isinstance(block.dw, nn.Identity) else 1
            else:
                c_in = c_out = block.local.conv.in_channels
                s = 1
            stride *= s
            rows.append(Row(kind, path, c_in, c_out, stride, count_params(block), flops.get(f"{root}.{path}", 0)))
    for row, p in zip(rows, paper):
        row.paper = p
    return rows


def format_table(model: LOLViT, variant: Optional[str], size: Tuple[int, int] = (224, 224)) -> str:
    rows = backbone_rows(model, variant, size)
    total_flops, _ = count_flops(model.eval(), size, model.in_chans)
    lines = [
        f"{'Module':<14} {'path':<11} {'in':>4} {'out':>4} {'stride':>6} {'params':>10} {'paper':>10} {'diff':>7} {'GFLOPs':>8}",
    ]
    for r in rows:
        diff = f"{100 * (r.params - r.paper) / r.paper:+.2f}%" if r.paper else ""
        paper = f"{r.paper:,}" if r.paper else "-"
        lines.append(
            f"{r.name:<14} {r.module:<11} {r.c_in:>4} {r.c_out:>4} {'/' + str(r.stride):>6} "
            f"{r.params:>10,} {paper:>10} {diff:>7} {r.flops / 1e9:>8.3f}"
        )
    backbone = sum(r.params for r in rows)
    bb_flops = sum(r.flops for r in rows)
    ref = PAPER_TOTALS.get(variant or "")
    ref_s = f"{ref:,}" if ref else "-"
    diff = f"{100 * (backbone - ref) / ref:+.2f}%" if ref else ""
    lines.append(f"{'Backbone total':<14} {'':<11} {'':>4} {'':>4} {'':>6} {backbone:>10,} {ref_s:>10} {diff:>7} {bb_flops / 1e9:>8.3f}")
    head = count_params(model) - backbone
    lines.append(f"{'Head':<14} {'':<11} {'':>4} {'':>4} {'':>6} {head:>10,} {'-':>10} {'':>7} {(total_flops - bb_flops) / 1e9:>8.3f}")
    lines.append(f"{'Model total':<14} {'':<11} {'':>4} {'':>4} {'':>6} {count_params(model):>10,} {'-':>10} {'':>7} {total_flops / 1e9:>8.3f}")
    lines.append(f"input {size[0]}x{size[1]}, batch 1; FLOPs = 2 x multiply-adds (torch.utils.flop_counter)")
    return "\n".join(lines)
