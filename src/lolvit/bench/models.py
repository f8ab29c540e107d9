"""``lolvit bench models`` (paper Tables 2-4, 7 and 13): latency and throughput of LOLViT and
the timm models users would pick instead, at batch 1 and 32, 224 and 384 px."""
import copy
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..nn.fuse import fuse
from ..nn.swap import swap_attention
from ..tasks.summary import count_flops, count_params
from .report import header, machine_info, markdown_table, write_report
from .timing import median, time_interleaved

# name -> (timm model, extra kwargs, kind); kind 'lolvit' gets every backend, the others are
# timm models re-parameterised for deployment (eager, ONNX Runtime, OpenVINO).
MODELS: Dict[str, Tuple[str, Dict[str, Any], str]] = {
    "lolvit_s": ("lolvit_s", {}, "lolvit"),
    "lolvit_x": ("lolvit_x", {}, "lolvit"),
    "lolvit_x L243 cache": ("lolvit_x", dict(depths=(2, 4, 3), cache=True), "lolvit"),
    "lolvit_x L243 no cache": ("lolvit_x", dict(depths=(2, 4, 3), cache=False), "lolvit"),
    "mobilevit_xxs": ("mobilevit_xxs", {}, "timm"),
    "mobilevit_xs": ("mobilevit_xs", {}, "timm"),
    "mobilevit_s": ("mobilevit_s", {}, "timm"),
    "mobilevit_xs+fwa": ("mobilevit_xs", {}, "swap"),
    "mobilevit_s+fwa": ("mobilevit_s", {}, "swap"),
    "mobilevitv2_050": ("mobilevitv2_050", {}, "timm"),
    "ghostnet_100": ("ghostnet_100", {}, "timm"),
    "ghostnetv3_050": ("ghostnetv3_050", {}, "timm"),
    "mobilenetv3_small_100": ("mobilenetv3_small_100", {}, "timm"),
    "efficientvit_m0": ("efficientvit_m0", {}, "timm"),
}
BACKENDS = ("eager", "channels_last", "fused", "fused_cl", "onnxruntime", "openvino", "compile")
REFERENCE = ("mobilevit_xs", "eager")
FULL = dict(models=tuple(MODELS), backends=("eager", "channels_last", "fused", "fused_cl", "onnxruntime", "openvino"),
            sizes=(224, 384),
            batches=(1, 32), warmup=2, repeats=7, budget_s=60.0)
QUICK = dict(models=("lolvit_x", "mobilevit_xs", "mobilevit_xs+fwa"),
             backends=("eager", "fused_cl", "onnxruntime"), sizes=(64,), batches=(1,), warmup=1, repeats=3,
             budget_s=1.0)


def build_model(name: str) -> nn.Module:
    """An eval-mode model of :data:`MODELS` (``pretrained=False``); timm anchors are
    re-parameterised for deployment, ``+fwa`` rows get :func:`lolvit.nn.swap_attention`."""
    import timm
    from timm.utils.model import reparameterize_model

    from .. import models as _  # noqa: F401  (registers lolvit_s/x with timm)

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    arch, kwargs, kind = MODELS[name]
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    if kind == "swap":
        swap_attention(model, "fwa")
    if kind != "lolvit":
        model = reparameterize_model(model)
    return model.eval()


def _torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def fn():
        with torch.inference_mode():
            return model(x)

    return fn


def export_onnx(model: nn.Module, path: str, size: int) -> str:
    """Legacy-exporter ONNX (opset 17) of ``model`` at ``size`` px with a dynamic batch."""
    x = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


def _ort_runner(path: str, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle ORT workers must not spin: they would steal the cores of the interleaved torch runs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: sess.run(None, feed)


def _openvino_runner(path: str, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    os.environ.setdefault("CI", "true")  # no telemetry
    import openvino as ov

    core = ov.Core()
    model = core.read_model(path)
    model.reshape({"input": list(x.shape)})
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    return lambda: request.infer(feed)


def _runners(
    name: str, model: nn.Module, backends: Sequence[str], size: int, batch: int, threads: int, tmp: str,
) -> Tuple[Dict[str, Callable[[], Any]], Dict[str, str]]:
    """Callables per backend for one model and input shape, and why a backend was skipped."""
    kind = MODELS[name][2]
    x = torch.randn(batch, 3, size, size)
    runners: Dict[str, Callable[[], Any]] = {}
    skipped: Dict[str, str] = {}
    fused = fuse(copy.deepcopy(model), channels_last=False) if kind == "lolvit" else model
    for backend in backends:
        if backend in ("fused", "fused_cl", "compile") and kind != "lolvit":
            continue
        try:
            if backend == "eager":
                runners[backend] = _torch_runner(model, x)
            elif backend == "channels_last":
                cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
                runners[backend] = _torch_runner(cl, x.contiguous(memory_format=torch.channels_last))
            elif backend == "fused":
                runners[backend] = _torch_runner(fused, x)
            elif backend == "fused_cl":
                runners[backend] = _torch_runner(fuse(copy.deepcopy(model), channels_last=True), x)
            elif backend == "compile":
                runners[backend] = _torch_runner(torch.compile(fused, dynamic=False), x)
            else:
                path = os.path.join(tmp, f"{name.replace(' ', '_')}_{size}.onnx")
                if not os.path.exists(path):
                    export_onnx(fused, path, size)
                make = _ort_runner if backend == "onnxruntime" else _openvino_runner
                runners[backend] = make(path, x, threads)
        except ImportError as e:
            skipped[backend] = f"not installed: {e}"
    return runners, skipped


def run(
    models: Sequence[str] = FULL["models"],
    backends: Sequence[str] = FULL["backends"],
    sizes: Sequence[int] = FULL["sizes"],
    batches: Sequence[int] = FULL["batches"],
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    seed: int = 0,
) -> Dict[str, Any]:
    """Per (size, batch), all models x backends are timed interleaved. Rows carry raw samples,
    ``median_ms``, ``fps``, ``params``, ``gflops`` (per image), ``gflops_per_s`` and
    ``vs_ref`` = median / median of ``mobilevit_xs`` eager at the same size and batch."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}; choose from {list(BACKENDS)}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads)
    built = {name: build_model(name) for name in models}
    info = {name: dict(params=count_params(m)) for name, m in built.items()}
    rows: List[Dict[str, Any]] = []
    skipped_all: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lolvit-bench-") as tmp:
        for size in sizes:
            for name, m in built.items():
                info[name][size] = count_flops(m, (size, size))[0] / 1e9
            for batch in batches:
                fns: Dict[str, Callable[[], Any]] = {}
                for name, m in built.items():
                    runners, skipped = _runners(name, m, backends, size, batch, threads, tmp)
                    for backend, fn in runners.items():
                        fns[f"{name}|{backend}"] = fn
                    skipped_all.update({f"{name}|{b}": why for b, why in skipped.items()})
                samples = time_interleaved(fns, warmup, repeats, budget_s)
                group = []
                for key, s in samples.items():
                    name, backend = key.split("|")
                    med = median(s)
                    gflops = info[name][size]
                    group.append(dict(model=name, backend=backend, size=size, batch=batch, samples_ms=s,
                                      median_ms=med, min_ms=min(s), fps=1e3 * batch / med, params=info[name]["params"],
                                      gflops=gflops, gflops_per_s=gflops * batch / (med / 1e3)))
                ref = next((r for r in group if (r["model"], r["backend"]) == REFERENCE), None)
                for r in group:
                    r["vs_ref"] = r["median_ms"] / ref["median_ms"] if ref else None
                    r["vs_ref_min"] = r["min_ms"] / ref["min_ms"] if ref else None
                rows.extend(group)
    machine["load_avg_end"] = machine_info(threads)["load_avg"]
    return dict(bench="models", reference=list(REFERENCE), warmup=warmup, repeats=repeats, budget_s=budget_s,
                skipped=skipped_all, machine=machine, rows=rows)


COLUMNS = [
    ("model", "model", ""), ("backend", "backend", ""), ("size", "size", ""), ("batch", "batch", ""),
    ("median ms", "median_ms", ".2f"), ("min ms", "min_ms", ".2f"), ("img/s", "fps", ".1f"),
    ("x mobilevit_xs", "vs_ref", ".3f"), ("x mobilevit_xs (min)", "vs_ref_min", ".3f"),
    ("params M", "params_m", ".3f"), ("GFLOPs", "gflops", ".3f"), ("GFLOP/s", "gflops_per_s", ".1f"),
]


def plot_models(fig: Any, rows: Sequence[Dict[str, Any]], max_bars: int = 10, ncols: int = 4) -> Any:
    """Draw images/s bars on ``fig``: one subplot per (size, batch, backend) with at most
    ``max_bars`` models (a larger group is split into balanced parts, fastest first), fastest on
    top, LOLViT rows orange, each bar labelled with its value; the parts of one group share the
    x range. Resizes ``fig`` and returns it."""
    order = {b: i for i, b in enumerate(BACKENDS)}
    panels = []
    for size, batch in sorted({(r["size"], r["batch"]) for r in rows}):
        group = [r for r in rows if (r["size"], r["batch"]) == (size, batch)]
        for backend in sorted({r["backend"] for r in group}, key=lambda b: order.get(b, len(order))):
            sel = sorted((r for r in group if r["backend"] == backend), key=lambda r: -r["fps"])
            xmax = 1.25 * sel[0]["fps"]
            parts = -(-len(sel) // max_bars)
            step = -(-len(sel) // parts)
            for k in range(parts):
                suffix = f" ({k + 1}/{parts})" if parts > 1 else ""
                panels.append((f"{size}px, batch {batch}, {backend}{suffix}", sel[k * step:(k + 1) * step], xmax))
    ncols = max(1, min(ncols, len(panels)))
    nrows = -(-len(panels) // ncols)
    fig.set_size_inches(4.2 * ncols, nrows * (0.25 * max_bars + 1.0))
    for i, (title, sel, xmax) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        sel = sel[::-1]  # barh draws bottom-up: fastest on top
        bars = ax.barh([r["model"] for r in sel], [r["fps"] for r in sel],
                       color=["C1" if r["model"].startswith("lolvit") else "C0" for r in sel])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xlim(0, xmax)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("images/s", fontsize=8)
        ax.tick_params(labelsize=8)
    return fig


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench models") -> Dict[str, Any]:
    rows = payload["rows"]
    for r in rows:
        r["params_m"] = r["params"] / 1e6
    md = header("Model latency and throughput", payload["machine"], command)
    md += ("\nfp32, `pretrained=False` weights, 1000 classes. 'fused' = conv+BN folded, NCHW weights "
           "(`lolvit.fuse(m, channels_last=False)`), 'fused_cl' = the same with channels-last weights "
           "(`lolvit.fuse(m)`, the default; NCHW input), 'channels_last' = the eager model and "
           "input in channels-last memory format; onnxruntime/openvino run the fused model's ONNX export (opset 17); timm "
           "models are re-parameterised for deployment in every backend. Median of interleaved "
           "samples; 'x mobilevit_xs' = time / time of mobilevit_xs eager at the same size and batch "
           "(medians; '(min)': fastest samples, less sensitive to a loaded machine). "
           "GFLOPs per image at batch 1 (2 FLOPs per multiply-add).\n\n")
    md += markdown_table(rows, COLUMNS)
    if payload.get("skipped"):
        md += "\n\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in payload["skipped"].items()) + "\n"

    def plot(fig):
        plot_models(fig, rows)

    paths = write_report(out_dir, "models", payload, md, plot)
    return dict(paths=paths, markdown=md)
