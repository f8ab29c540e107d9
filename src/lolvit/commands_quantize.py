"""``lolvit quantize``: static int8 of an exported classifier, calibrated on the user's dataset."""
import argparse

from .commands import positive_int


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser(
        "quantize", help="post-training static int8 (ONNX Runtime or OpenVINO/NNCF) calibrated on real images",
        description="Exports the model in fp32, calibrates int8 activation ranges on --calib-images images of the "
                    "dataset's train split (preprocessed as the checkpoint was evaluated) and writes the int8 model. "
                    "The FWA attention products and normalisations stay fp32.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint path (.safetensors with its .json)")
    src.add_argument("--model", help="model name (random weights; 10 classes for digits/fashion-mnist)")
    p.add_argument("--data", required=True, help="digits, fashion-mnist or a folder with train/ and val/ class folders")
    p.add_argument("--data-root", default=None, help="folder holding the Fashion-MNIST files")
    p.add_argument("--calib-images", type=positive_int, default=300, help="calibration images (default 300)")
    p.add_argument("--format", choices=("openvino", "onnx"), default="openvino",
                   help="openvino (NNCF, .xml/.bin; default, the faster int8 here) or onnx (ONNX Runtime QDQ)")
    p.add_argument("--output", required=True, help="int8 model path (.xml for openvino, .onnx for onnx)")
    p.add_argument("--size", nargs=2, type=positive_int, default=None, metavar=("H", "W"),
                   help="input size (default: the checkpoint's preprocessing size)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--eval", action="store_true", help="report top-1 of fp32 vs int8 on the val split")
    p.add_argument("--eval-images", type=positive_int, default=None,
                   help="evaluate on this many val images (default all)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch/runtime threads")
    p.set_defaults(func=_quantize)


def _batches(ds, batch_size: int, limit=None):
    from torch.utils.data import DataLoader, Subset

    from .tasks.classify.data import collate_skip, subset_indices

    if limit is not None:
        ds = Subset(ds, subset_indices(ds.targets, limit)) if hasattr(ds, "targets") else ds
    for x, y, _ in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_skip):
        if x is not None:
            yield x, y


def _check_toolchain(fmt: str) -> None:
    """A missing optional package is a one-line CLI error, found before any work."""
    import importlib.util

    need = ["onnx", "onnxscript", "onnxruntime"] + (["openvino", "nncf"] if fmt == "openvino" else [])
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        extra = "openvino" if fmt == "openvino" else "export"
        raise ValueError(f"--format {fmt} needs {', '.join(missing)}: pip install 'lolvit[export,{extra}]'")


def _quantize(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    import lolvit
    from .io import build_model
    from .quantize import check_output, load_runner, quantize_model
    from .tasks.classify.data import BUILTIN, build_dataset
    from .tasks.predict import data_config, eval_transform

    check_output(args.output, args.format)
    _check_toolchain(args.format)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = lolvit.load_checkpoint(args.checkpoint)
    else:
        model = build_model(args.model, {"num_classes": 10} if args.data in BUILTIN else {}, "--model").eval()
    lolvit.fuse(model)
    cfg = data_config(model, tuple(args.size) if args.size else None)
    names = getattr(model, "class_names", None)
    tf = eval_transform(cfg)
    train = build_dataset(args.data, "train", tf, cfg["input_size"][-1], args.data_root, classes=names)
    if getattr(model, "num_classes", len(train.classes)) != len(train.classes):
        raise ValueError(f"the model has {model.num_classes} classes but {args.data!r} has {len(train.classes)}")
    calib = (x for x, _ in _batches(train, args.batch_size, args.calib_images))
    with tempfile.TemporaryDirectory(prefix="lolvit-quantize-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        path = quantize_model(model, calib, args.output, args.format, tuple(cfg["input_size"][-2:]),
                              args.calib_images, fp32_output=fp32 if args.eval else None)
        print(f"wrote {path} (int8, calibrated on {args.calib_images} {args.data} train images)")
        if args.eval:
            val = build_dataset(args.data, "val", tf, cfg["input_size"][-1], args.data_root, classes=names)
            runs = {"fp32": load_runner(fp32, args.threads or 0), "int8": load_runner(path, args.threads or 0)}
            correct = {k: 0 for k in runs}
            agree = total = 0
            for x, y in _batches(val, args.batch_size, args.eval_images):
                preds = {k: np.argmax(f(x.numpy()), axis=1) for k, f in runs.items()}
                for k, p in preds.items():
                    correct[k] += int((p == y.numpy()).sum())
                agree += int((preds["fp32"] == preds["int8"]).sum())
                total += len(y)
            t32, t8 = 100 * correct["fp32"] / total, 100 * correct["int8"] / total
            print(f"top-1 on {total} {args.data} val images: fp32 {t32:.2f} %, int8 {t8:.2f} % "
                  f"({t8 - t32:+.2f} points); same top-1 class on {100 * agree / total:.1f} %")
    return 0
