"""int8 vs fp32 latency of lolvit_s in ONNX Runtime and OpenVINO (docs/quantization.md).

    python scripts/bench_int8.py prepare DIR                   # fp32 export + int8 at 224 and 640 px
    /work/tools/quiet-run python scripts/bench_int8.py time DIR  # interleaved batch-1 timing, 2 threads
    python scripts/bench_int8.py prepare-det DIR                # lolvit-s-det (ultralytics ONNX) + int8
    /work/tools/quiet-run python scripts/bench_int8.py time-det DIR

``prepare``: lolvit_s (random weights, fused) exported once with dynamic H/W; int8 models
calibrated on 32 digits images at each size with lolvit.quantize (ONNX Runtime QDQ and
OpenVINO/NNCF). ``time`` imports no torch (a torch thread pool next to a runtime's slows both):
per size, every model runs ``--iters`` calls in turn for ``--rounds`` rounds; medians and mins.
"""
import argparse
import os
import statistics
import time

SIZES = (224, 640)


def prepare(out: str) -> None:
    import torch

    torch.set_num_threads(2)
    import openvino as ov

    import lolvit
    from lolvit.export import export_onnx
    from lolvit.io import build_model
    from lolvit.quantize import calibration_batches, quantize_file
    from lolvit.tasks.classify.data import build_dataset
    from lolvit.tasks.predict import data_config, eval_transform

    os.makedirs(out, exist_ok=True)
    model = lolvit.fuse(build_model("lolvit_s", {}, "lolvit_s").eval())
    fp32 = export_onnx(model, f"{out}/fp32.onnx", (224, 224))
    ov.save_model(ov.convert_model(str(fp32)), f"{out}/fp32.xml", compress_to_fp16=False)
    for s in SIZES:
        ds = build_dataset("digits", "train", eval_transform(data_config(model, s)), s)
        batches = calibration_batches([torch.stack([ds[i][0] for i in range(j, j + 4)]) for j in range(0, 32, 4)])
        quantize_file(fp32, f"{out}/int8_{s}.onnx", batches, "onnx")
        quantize_file(fp32, f"{out}/int8_{s}.xml", batches, "openvino")


def letterbox(im, s: int = 640):
    """ultralytics-style letterbox to s x s (grey 114 padding), RGB float in [0, 1], (1, 3, s, s)."""
    import numpy as np
    from PIL import Image

    r = s / max(im.size)
    im = im.resize((round(im.width * r), round(im.height * r)), Image.BILINEAR)
    canvas = Image.new("RGB", (s, s), (114, 114, 114))
    canvas.paste(im, ((s - im.width) // 2, (s - im.height) // 2))
    return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0


def prepare_det(out: str) -> None:
    """lolvit-s-det (random weights) exported by ultralytics at 640 px; NNCF int8 calibrated on the
    4 real photos shipped offline (ultralytics' bus/zidane, scikit-learn's china/flower)."""
    import glob
    import shutil

    import openvino as ov
    import torch
    import ultralytics
    from PIL import Image
    from sklearn.datasets import load_sample_images

    import lolvit.integrations.ultralytics as lu
    from lolvit.quantize import quantize_file

    torch.set_num_threads(2)
    os.makedirs(out, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(out)  # ultralytics writes the export next to the YAML name
    try:
        shutil.move(lu.export("lolvit-s-det.yaml", format="onnx", imgsz=640), "fp32.onnx")
    finally:
        os.chdir(cwd)
    photos = [Image.open(f).convert("RGB")
              for f in sorted(glob.glob(os.path.join(os.path.dirname(ultralytics.__file__), "assets", "*.jpg")))]
    photos += [Image.fromarray(a) for a in load_sample_images().images]
    ov.save_model(ov.convert_model(f"{out}/fp32.onnx"), f"{out}/fp32.xml", compress_to_fp16=False)
    quantize_file(f"{out}/fp32.onnx", f"{out}/int8.xml", [letterbox(p) for p in photos], "openvino")


def timing_det(d: str, rounds: int, iters: int, threads: int = 2) -> None:
    os.environ.setdefault("CI", "true")
    import numpy as np
    import openvino as ov

    core = ov.Core()

    def ov_run(p, hint="f32"):
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if hint:
            cfg["INFERENCE_PRECISION_HINT"] = hint
        req = core.compile_model(p, "CPU", cfg).create_infer_request()
        return lambda x: req.infer({0: x})

    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    runs = {"ov f32": ov_run(f"{d}/fp32.xml"), "ov int8": ov_run(f"{d}/int8.xml"),
            "ov bf16": ov_run(f"{d}/fp32.xml", None)}
    _interleave(runs, x, rounds, iters, 640)


def _interleave(runs, x, rounds: int, iters: int, s: int):
    for f in runs.values():
        for _ in range(3):
            f(x)
    t = {k: [] for k in runs}
    for _ in range(rounds):
        for k, f in runs.items():
            for _ in range(iters):
                a = time.perf_counter()
                f(x)
                t[k].append((time.perf_counter() - a) * 1e3)
    for k, v in t.items():
        print(f"{s} px {k:9s} median {statistics.median(v):7.2f} ms  min {min(v):7.2f} ms", flush=True)
    for name, a, b in (("ort", "ort fp32", "ort int8"), ("ov", "ov f32", "ov int8"),
                       ("ov bf16 vs int8", "ov bf16", "ov int8")):
        if a in t and b in t:
            print(f"{s} px {name}: int8 speed-up median {statistics.median(t[a]) / statistics.median(t[b]):.2f}x, "
                  f"min {min(t[a]) / min(t[b]):.2f}x", flush=True)


def timing(d: str, rounds: int, iters: int, threads: int = 2) -> None:
    os.environ.setdefault("CI", "true")
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()

    def ort_run(p):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"images": x})

    def ov_run(p, hint="f32"):
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if hint:
            cfg["INFERENCE_PRECISION_HINT"] = hint
        req = core.compile_model(p, "CPU", cfg).create_infer_request()
        return lambda x: req.infer({0: x})

    for s in SIZES:
        x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
        runs = {"ort fp32": ort_run(f"{d}/fp32.onnx"), "ort int8": ort_run(f"{d}/int8_{s}.onnx"),
                "ov f32": ov_run(f"{d}/fp32.xml"), "ov int8": ov_run(f"{d}/int8_{s}.xml"),
                "ov bf16": ov_run(f"{d}/fp32.xml", None)}  # OpenVINO's CPU default precision here
        _interleave(runs, x, rounds, iters, s)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("prepare", "time", "prepare-det", "time-det"))
    ap.add_argument("dir")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    if a.mode == "prepare":
        prepare(a.dir)
    elif a.mode == "prepare-det":
        prepare_det(a.dir)
    elif a.mode == "time":
        timing(a.dir, a.rounds, a.iters)
    else:
        timing_det(a.dir, a.rounds, a.iters)
