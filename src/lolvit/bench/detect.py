"""``lolvit bench detect`` (paper Tables 5 and 7): parameters, FLOPs and batch-1 latency of the
LOLViT-YOLO detectors against yolov8n and yolo11n, all built from YAMLs (no weights).

Every model runs the way ultralytics deploys it: eager = ultralytics' ``fuse()`` then the
forward (what ``yolo predict`` runs), ONNX Runtime and OpenVINO (f32) = the ONNX file of
ultralytics' own exporter (what ``yolo export format=onnx`` writes). All (model, backend) pairs
of one input size are timed interleaved in one process; ratios are against yolov8n on the same
backend at the same size.
"""
import copy
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..tasks.summary import count_flops, count_params
from .models import export_onnx as export_plain_onnx
from .report import header, machine_info, markdown_table, write_report
from .timing import median, time_interleaved

MODELS = ("lolvit-s-det", "lolvit-x-det", "yolov8n", "yolo11n")
# '<lolvit detector>:backbone' rows time layer 0 alone (LOLViTBackbone): what no neck or head can win back
BACKBONE_ROWS = ("lolvit-s-det:backbone", "lolvit-x-det:backbone")
BACKENDS = ("eager", "onnxruntime", "openvino")
REFERENCE = "yolov8n"
# Paper budget (Tables 5/7): GFLOPs at 640 px with 80 classes, parameters with 20 classes (VOC).
BUDGETS = {"lolvit-s-det": dict(gflops=7.5, params=1.6e6), "lolvit-x-det": dict(gflops=14.5, params=3.6e6)}
# Issue 9 speed targets at 640 px, batch 1: latency / latency of yolov8n on the same backend.
TARGETS = {
    ("lolvit-s-det", "eager"): 1.4, ("lolvit-s-det", "onnxruntime"): 1.2, ("lolvit-s-det", "openvino"): 1.2,
    ("lolvit-x-det", "eager"): 2.6, ("lolvit-x-det", "openvino"): 2.0,
}
PARAM_CLASSES = 20
FULL = dict(models=MODELS + BACKBONE_ROWS, backends=BACKENDS, sizes=(320, 640), warmup=3, repeats=15, budget_s=60.0)
QUICK = dict(models=MODELS, backends=BACKENDS, sizes=(64,), warmup=1, repeats=3, budget_s=1.0)


def model_yaml(name: str) -> str:
    """A shipped LOLViT YAML for ``lolvit-*`` names, a ``.yaml`` path as given, ``<name>.yaml``
    (ultralytics' own, e.g. ``yolov8n``) otherwise."""
    from ..integrations.ultralytics import model_cfg

    return model_cfg(name if name.startswith("lolvit-") or name.endswith(".yaml") else f"{name}.yaml")


def build_detector(name: str, nc: int = 80) -> nn.Module:
    """An eval-mode ultralytics ``DetectionModel``/``SegmentationModel`` built from its YAML."""
    from ..integrations.ultralytics import configure_offline, register

    configure_offline()
    register()
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    cfg = model_yaml(name)
    segment = Path(cfg).stem.endswith("-seg")
    model = (SegmentationModel if segment else DetectionModel)(cfg, nc=nc, verbose=False).eval()
    model.task = "segment" if segment else "detect"  # what ultralytics.YOLO sets; its exporter reads it
    return model


def build_bench_model(name: str, nc: int = 80) -> nn.Module:
    """:func:`build_detector`, or for ``<lolvit YAML>:backbone`` its layer 0 (the LOLViT backbone)."""
    base, sep, part = name.partition(":")
    if sep and (part != "backbone" or not base.startswith("lolvit-")):
        raise ValueError(f"model {name!r}: only '<lolvit YAML name>:backbone' selects a part, e.g. 'lolvit-s-det:backbone'")
    model = build_detector(base, nc)
    return model.model[0].eval() if sep else model


def detector_gflops(model: nn.Module, size: int) -> float:
    """GFLOPs of one forward at ``size`` x ``size`` (FlopCounterMode, 2 per multiply-add)."""
    was_training = model.training
    model.eval()
    try:
        return count_flops(model, (size, size))[0] / 1e9
    finally:
        model.train(was_training)


def export_onnx(model: nn.Module, folder: str, name: str, size: int) -> str:
    """ONNX file (static batch-1 ``size`` px) written by ultralytics' exporter, as ``yolo export``
    does: it fuses a copy of the model and sets the head to export mode."""
    from ultralytics.engine.exporter import Exporter
    from ultralytics.utils import LOGGER

    m = copy.deepcopy(model)
    m.pt_path = str(Path(folder) / f"{name}_{size}.pt")  # the exporter names its output after this
    args = dict(format="onnx", imgsz=size, batch=1, device="cpu", simplify=False, dynamic=False, half=False,
                nms=False, verbose=False, mode="export", data=None)
    level = LOGGER.level
    LOGGER.setLevel("WARNING")  # the exporter's progress lines would bury the bench table
    try:
        return str(Exporter(overrides=args)(model=m))
    finally:
        LOGGER.setLevel(level)


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _is_backbone(model: nn.Module) -> bool:
    from ..integrations.ultralytics import LOLViTBackbone

    return isinstance(model, LOLViTBackbone)


def _eager_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    fused = copy.deepcopy(model).eval()
    fused = fused.fuse() if _is_backbone(fused) else fused.fuse(verbose=False)

    def fn():
        with torch.inference_mode():
            return fused(x)

    return fn


def _ort_runner(path: str, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to the others
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def _openvino_runner(path: str, x: torch.Tensor, threads: int) -> Callable[[], Any]:
    os.environ.setdefault("CI", "true")  # no telemetry
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()
    feed = {0: x.numpy()}
    return lambda: request.infer(feed)


def _runners(name: str, model: nn.Module, backends: Sequence[str], size: int, threads: int,
             tmp: str) -> Tuple[Dict[str, Callable[[], Any]], Dict[str, str]]:
    x = torch.rand(1, 3, size, size)
    runners: Dict[str, Callable[[], Any]] = {}
    skipped: Dict[str, str] = {}
    onnx_path: Optional[str] = None
    for backend in backends:
        try:
            if backend == "eager":
                runners[backend] = _eager_runner(model, x)
                continue
            make = _ort_runner if backend == "onnxruntime" else _openvino_runner
            __import__(backend)
            if onnx_path is None and _is_backbone(model):
                fused = copy.deepcopy(model).eval().fuse()
                onnx_path = export_plain_onnx(fused, os.path.join(tmp, f"{_file_stem(name)}_{size}.onnx"), size)
            onnx_path = onnx_path or export_onnx(model, tmp, _file_stem(name), size)
            runners[backend] = make(onnx_path, x, threads)
        except ImportError as e:
            skipped[backend] = f"not installed: {e}"
    return runners, skipped


def run(
    models: Sequence[str] = FULL["models"],
    backends: Sequence[str] = FULL["backends"],
    sizes: Sequence[int] = FULL["sizes"],
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    seed: int = 0,
) -> Dict[str, Any]:
    """Per input size, every (model, backend) pair is timed interleaved. Rows carry raw samples,
    ``median_ms``, ``min_ms``, ``params`` (80 classes), ``params_20`` (20 classes), ``gflops`` at
    that size, ``vs_ref`` = median / median of yolov8n on the same backend and size, and at 640 px
    the issue's ``target`` ratio where one is set."""
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise ValueError(f"unknown backend(s) {bad}; choose from {list(BACKENDS)}")
    bad_sizes = [s for s in sizes if not isinstance(s, int) or s < 32 or s % 32]
    if bad_sizes:
        raise ValueError(f"sizes must be multiples of 32 (stride of P5), got {bad_sizes}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads)
    built = {name: build_bench_model(name) for name in models}
    info = {name: dict(params=count_params(m), params_20=count_params(build_bench_model(name, PARAM_CLASSES)))
            for name, m in built.items()}
    rows: List[Dict[str, Any]] = []
    skipped_all: Dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="lolvit-bench-detect-") as tmp:
        for size in sizes:
            fns: Dict[str, Callable[[], Any]] = {}
            for name, m in built.items():
                info[name][size] = detector_gflops(m, size)
                runners, skipped = _runners(name, m, backends, size, threads, tmp)
                fns.update({f"{name}|{backend}": fn for backend, fn in runners.items()})
                skipped_all.update({f"{name}|{b}": why for b, why in skipped.items()})
            samples = time_interleaved(fns, warmup, repeats, budget_s)
            group = []
            for key, s in samples.items():
                name, backend = key.split("|")
                group.append(dict(model=name, backend=backend, size=size, samples_ms=s, median_ms=median(s),
                                  min_ms=min(s), params=info[name]["params"], params_20=info[name]["params_20"],
                                  gflops=info[name][size]))
            for r in group:
                ref = next((g for g in group if g["model"] == REFERENCE and g["backend"] == r["backend"]), None)
                r["vs_ref"] = r["median_ms"] / ref["median_ms"] if ref else None
                r["vs_ref_min"] = r["min_ms"] / ref["min_ms"] if ref else None
                target = TARGETS.get((r["model"], r["backend"])) if size == 640 else None
                r["target"] = target
                r["meets_target"] = (r["vs_ref"] <= target) if target is not None and r["vs_ref"] else None
            rows.extend(group)
    machine["load_avg_end"] = machine_info(threads)["load_avg"]
    budgets = []
    for name, b in BUDGETS.items():
        if name in info:
            at640 = info[name].get(640)
            budgets.append(dict(model=name, gflops_640=at640, gflops_budget=b["gflops"], params_20=info[name]["params_20"],
                                params_paper=b["params"]))
    return dict(bench="detect", reference=REFERENCE, warmup=warmup, repeats=repeats, budget_s=budget_s,
                skipped=skipped_all, machine=machine, budgets=budgets, rows=rows)


COLUMNS = [
    ("model", "model", ""), ("backend", "backend", ""), ("size", "size", ""),
    ("median ms", "median_ms", ".2f"), ("min ms", "min_ms", ".2f"),
    ("x yolov8n", "vs_ref", ".3f"), ("x yolov8n (min)", "vs_ref_min", ".3f"), ("target", "target", ".1f"),
    ("params M (80 cls)", "params_m", ".3f"), ("params M (20 cls)", "params_20_m", ".3f"), ("GFLOPs", "gflops", ".2f"),
]


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench detect") -> Dict[str, Any]:
    rows = payload["rows"]
    for r in rows:
        r["params_m"] = r["params"] / 1e6
        r["params_20_m"] = r["params_20"] / 1e6
    md = header("Detector parameters, FLOPs and latency (LOLViT-YOLO vs yolov8n / yolo11n)",
                payload["machine"], command)
    md += ("\nfp32, batch 1, models built from their YAMLs (80 classes, no weights). 'eager' = ultralytics' "
           "`fuse()` then the forward (the path of `yolo predict`); onnxruntime/openvino (f32 precision hint) run "
           "the ONNX file of ultralytics' exporter (`yolo export format=onnx`, opset chosen by ultralytics, "
           "static shape). ':backbone' rows run layer 0 of that detector alone (the LOLViT backbone, conv+BN "
           "folded; ONNX by torch.onnx, opset 17). All rows of one size are timed interleaved; 'x yolov8n' = median / median of "
           "yolov8n on the same backend and size ('(min)': fastest samples). 'target' = issue 9's ratio at "
           "640 px. GFLOPs by torch.utils.flop_counter at that size, 2 per multiply-add.\n\n")
    md += markdown_table(rows, COLUMNS)
    if payload.get("budgets"):
        md += "\n\nPaper budget (Tables 5/7):\n\n" + markdown_table(payload["budgets"], [
            ("model", "model", ""), ("GFLOPs @640", "gflops_640", ".2f"), ("budget", "gflops_budget", ".1f"),
            ("params (20 cls)", "params_20", ""), ("paper", "params_paper", ".0f")])
    if payload.get("skipped"):
        md += "\n\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in payload["skipped"].items()) + "\n"

    def plot(fig):
        sizes = sorted({r["size"] for r in rows})
        models = list(dict.fromkeys(r["model"] for r in rows))
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        width = 0.8 / max(len(backends), 1)
        for i, size in enumerate(sizes):
            ax = fig.add_subplot(1, len(sizes), i + 1)
            for j, backend in enumerate(backends):
                sel = {r["model"]: r["median_ms"] for r in rows if r["size"] == size and r["backend"] == backend}
                xs = [k + j * width for k, m in enumerate(models) if m in sel]
                ax.bar(xs, [sel[m] for m in models if m in sel], width, label=backend)
            ax.set_xticks([k + width * (len(backends) - 1) / 2 for k in range(len(models))])
            ax.set_xticklabels(models, fontsize=6, rotation=20)
            ax.set_title(f"{size}px, batch 1", fontsize=8)
            ax.set_ylabel("ms (median)", fontsize=7)
            ax.tick_params(axis="y", labelsize=6)
            if i == 0:
                ax.legend(fontsize=6)

    paths = write_report(out_dir, "detect", payload, md, plot)
    return dict(paths=paths, markdown=md)
