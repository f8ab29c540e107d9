"""``lolvit bench deploy``: LOLViT against the timm models users deploy instead, in every CPU
runtime each supports; per input shape, one interleaved group of all models per runtime.

Runtimes: ``eager`` (each model's own deploy form: :func:`lolvit.fuse` for LOLViT, timm's
``reparameterize_model`` for the others), ``eager_cl`` (timm models in channels-last memory, the
layout ``lolvit.fuse`` uses), ``compile`` (:func:`lolvit.compile`: fused, ``torch.compile``
with dynamic shapes, one compile per model for all sizes), ``onnxruntime`` and ``openvino``
(fp32 precision hint) on the legacy ONNX export of the deploy form.
"""
import copy
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..nn.fuse import fuse
from ..tasks.summary import count_flops, count_params
from .models import _openvino_runner, _ort_runner, _torch_runner, build_model, export_onnx
from .report import header, machine_info, markdown_table, write_report
from .timing import median, time_interleaved, warm_thread_pool

MODELS = ("lolvit_s", "lolvit_x", "mobilevit_xxs", "mobilevit_xs", "mobilevitv2_050", "ghostnet_100",
          "mobilenetv3_small_100", "efficientvit_m0")
RUNTIMES = ("eager", "eager_cl", "compile", "onnxruntime", "openvino")
# the comparisons: lolvit_x against mobilevit_xs, lolvit_s against ghostnet_100
PEERS = {"lolvit_x": "mobilevit_xs", "lolvit_s": "ghostnet_100"}
FULL = dict(models=MODELS, runtimes=("eager", "eager_cl", "onnxruntime", "openvino"),
            shapes=((224, 1), (384, 1), (640, 1), (224, 32)), warmup=2, repeats=9, budget_s=40.0)
QUICK = dict(models=("lolvit_s", "ghostnet_100"), runtimes=("eager", "onnxruntime", "openvino"),
             shapes=((64, 1), (64, 4)), warmup=1, repeats=3, budget_s=2.0)


def _build(name: str) -> nn.Module:
    model = build_model(name)
    return fuse(model) if name.startswith("lolvit") else model


def _runner(
    name: str, m: nn.Module, rt: str, x: torch.Tensor, threads: int, tmp: str, compiled: Dict[str, nn.Module],
) -> Optional[Callable[[], Any]]:
    """The timed callable of one model in one runtime (None: not applicable)."""
    if rt == "eager":
        return _torch_runner(m, x)
    if rt == "eager_cl":
        if name.startswith("lolvit"):
            return None  # lolvit.fuse is channels-last already
        cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
        return _torch_runner(cl, x.contiguous(memory_format=torch.channels_last))
    if rt == "compile":
        return _torch_runner(compiled[name], x)
    path = os.path.join(tmp, f"{name}_{x.shape[-1]}.onnx")
    if not os.path.exists(path):
        export_onnx(m, path, x.shape[-1])
    make = _ort_runner if rt == "onnxruntime" else _openvino_runner
    return make(path, x, threads)


def run(
    models: Sequence[str] = FULL["models"],
    runtimes: Sequence[str] = FULL["runtimes"],
    shapes: Sequence[Tuple[int, int]] = FULL["shapes"],
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    seed: int = 0,
) -> Dict[str, Any]:
    """Per (size, batch) shape and runtime, all models are timed interleaved (runtimes one after
    the other: OpenMP/TBB workers of one runtime idling next to another's distort both). Rows carry raw
    samples, ``median_ms``/``min_ms``, ``img_s``, ``gflops`` (per image, FlopCounterMode at the
    real size), achieved ``gflops_per_s`` and ``vs_peer`` (time / time of the model's peer in
    :data:`PEERS`, same runtime and shape; medians, and ``vs_peer_min`` from the fastest samples)."""
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise ValueError(f"unknown runtime(s) {bad}; choose from {list(RUNTIMES)}")
    for size, batch in shapes:
        if size < 32 or batch < 1:
            raise ValueError(f"shapes need size >= 32 and batch >= 1, got {(size, batch)}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads)
    warm_thread_pool()
    built = {name: _build(name) for name in models}
    params = {name: count_params(m) for name, m in built.items()}
    compiled: Dict[str, nn.Module] = {}
    if "compile" in runtimes:
        from ..deploy import compile_model

        compiled = {name: compile_model(copy.deepcopy(m), fused=name.startswith("lolvit")) for name, m in built.items()}
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    gflops: Dict[Tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="lolvit-deploy-") as tmp:
        for size, batch in shapes:
            x = torch.randn(batch, 3, size, size)
            samples: Dict[str, List[float]] = {}
            for rt in runtimes:  # one group per runtime, its sessions built just before and freed after
                fns: Dict[str, Callable[[], Any]] = {}
                for name, m in built.items():
                    if (name, size) not in gflops:
                        gflops[name, size] = count_flops(m, (size, size))[0] / 1e9
                    try:
                        fn = _runner(name, m, rt, x, threads, tmp, compiled)
                    except ImportError as e:
                        skipped[f"{name}|{rt}"] = f"not installed: {e}"
                        continue
                    if fn is not None:
                        fns[f"{name}|{rt}"] = fn
                if fns:
                    if rt in ("eager", "eager_cl", "compile"):
                        warm_thread_pool(0.5)
                    samples.update(time_interleaved(fns, warmup, repeats, budget_s))
                del fns
            group = {}
            for key, s in samples.items():
                name, rt = key.split("|")
                med, g = median(s), gflops[name, size]
                group[key] = dict(model=name, runtime=rt, size=size, batch=batch, samples_ms=s, median_ms=med,
                                  min_ms=min(s), img_s=1e3 * batch / med, params=params[name], gflops=g,
                                  gflops_per_s=g * batch / (med / 1e3))
            for key, r in group.items():
                peer = group.get(f"{PEERS.get(r['model'], '')}|{r['runtime']}")
                r["peer"] = PEERS.get(r["model"])
                r["vs_peer"] = r["median_ms"] / peer["median_ms"] if peer else None
                r["vs_peer_min"] = r["min_ms"] / peer["min_ms"] if peer else None
                rows.append(r)
    machine["load_avg_end"] = machine_info(threads)["load_avg"]
    return dict(bench="deploy", peers=PEERS, warmup=warmup, repeats=repeats, budget_s=budget_s,
                skipped=skipped, machine=machine, rows=rows)


COLUMNS = [
    ("model", "model", ""), ("runtime", "runtime", ""), ("size", "size", ""), ("batch", "batch", ""),
    ("median ms", "median_ms", ".2f"), ("min ms", "min_ms", ".2f"), ("img/s", "img_s", ".1f"),
    ("peer", "peer", ""), ("x peer", "vs_peer", ".3f"), ("x peer (min)", "vs_peer_min", ".3f"),
    ("params M", "params_m", ".3f"), ("GFLOPs", "gflops", ".3f"), ("GFLOP/s", "gflops_per_s", ".1f"),
]


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench deploy") -> Dict[str, Any]:
    rows = payload["rows"]
    for r in rows:
        r["params_m"] = r["params"] / 1e6
    md = header("Deployment runtimes (CPU)", payload["machine"], command)
    md += ("\nfp32, `pretrained=False`, 1000 classes. eager = each model's deploy form (`lolvit.fuse`: "
           "BN folded, channels-last weights; timm: `reparameterize_model`, NCHW); eager_cl = the timm "
           "model and input channels-last; compile = `lolvit.compile` (torch.compile, dynamic shapes); "
           "onnxruntime / openvino (f32 precision hint) run the legacy ONNX export (opset 17) of the "
           "deploy form. 'x peer' = time / time of the peer (lolvit_x: mobilevit_xs, lolvit_s: ghostnet_100) "
           "in the same runtime and shape, from one interleaved group (medians; '(min)': fastest samples). "
           "GFLOPs per image (FlopCounterMode, 2 per multiply-add); GFLOP/s achieved = GFLOPs x batch / time.\n\n")
    md += markdown_table(rows, COLUMNS)
    if payload.get("skipped"):
        md += "\n\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in payload["skipped"].items()) + "\n"

    def plot(fig):
        groups = sorted({(r["size"], r["batch"]) for r in rows})
        for i, (size, batch) in enumerate(groups):
            ax = fig.add_subplot(1, len(groups), i + 1)
            sel = sorted((r for r in rows if (r["size"], r["batch"]) == (size, batch)), key=lambda r: r["img_s"])
            ax.barh([f"{r['model']} [{r['runtime']}]" for r in sel], [r["img_s"] for r in sel],
                    color=["C1" if r["model"].startswith("lolvit") else "C0" for r in sel])
            ax.set_title(f"{size}px, batch {batch}", fontsize=8)
            ax.set_xlabel("images/s", fontsize=7)
            ax.tick_params(labelsize=4 if i == 0 else 0)
            if i:
                ax.set_yticklabels([])

    paths = write_report(out_dir, "deploy", payload, md, plot)
    return dict(paths=paths, markdown=md)
