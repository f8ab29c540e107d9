"""Side-by-side timing of FWA and LOLViT-X from an older commit against the working tree.

    git archive abd3e08 src | tar -x -C /tmp/before
    python scripts/bench_before_after.py /tmp/before/src [--threads 2] [--size 224]

The old package is imported as ``lolvit_before`` (a copy with an empty ``__init__`` so that it
does not register timm models twice). Prints medians (interleaved) and measured peak memory.
"""
import argparse
import copy
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def load_before(src: str):
    tmp = Path(tempfile.mkdtemp(prefix="lolvit-before-"))
    shutil.copytree(Path(src) / "lolvit", tmp / "lolvit_before")
    (tmp / "lolvit_before" / "__init__.py").write_text("")
    sys.path.insert(0, str(tmp))
    import lolvit_before.nn.attention as attention
    from lolvit_before.models.lolvit import LOLViT

    return attention, sys.modules["lolvit_before.nn.fuse"].fuse, LOLViT


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("before_src")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    old_attention, old_fuse, OldLOLViT = load_before(args.before_src)
    import lolvit
    from lolvit.bench.timing import median, peak_memory, time_interleaved
    from lolvit.models import LOLViT, MODEL_CONFIGS
    from lolvit.nn import attention

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(128, 1024, 96)
    a = old_attention.build_attention("fwa", 96, 4).eval()
    b = attention.build_attention("fwa", 96, 4).eval()
    b.load_state_dict(a.state_dict())
    m = attention.build_attention("mhsa", 96, 4).eval()
    fns = {"fwa before": lambda: a(x, 32, 32), "fwa after": lambda: b(x, 32, 32), "mhsa": lambda: m(x, 32, 32)}
    with torch.inference_mode():
        s = time_interleaved(fns, 1, args.repeats)
        print("attention [128, 96, 32, 32], 1 module")
        for k, fn in fns.items():
            print(f"  {k:12s} {median(s[k]):9.1f} ms  {peak_memory(fn) / 2**20:7.1f} MB")
    import timm

    cfg = MODEL_CONFIGS["lolvit_x"].to_dict()
    old = OldLOLViT(**cfg).eval()
    new = LOLViT(**cfg).eval()
    new.load_state_dict(old.state_dict())
    old = old_fuse(old)
    fused = lolvit.fuse(copy.deepcopy(new))
    fused_cl = lolvit.fuse(copy.deepcopy(new), channels_last=True)
    ref = timm.create_model("mobilevit_xs").eval()
    img = torch.randn(1, 3, args.size, args.size)
    fns = {"before fused": lambda: old(img), "after fused": lambda: fused(img),
           "after fused_cl": lambda: fused_cl(img), "mobilevit_xs": lambda: ref(img)}
    with torch.inference_mode():
        assert torch.allclose(old(img), fused_cl(img), atol=1e-4)
        s = time_interleaved(fns, 2, 15, budget_s=120)
    base = median(s["mobilevit_xs"])
    print(f"lolvit_x, {args.size} px, batch 1")
    for k in fns:
        print(f"  {k:15s} {median(s[k]):8.2f} ms  x mobilevit_xs {median(s[k]) / base:.3f}")


if __name__ == "__main__":
    main()
