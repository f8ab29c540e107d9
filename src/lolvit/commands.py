"""Core commands: ``info``, ``predict``, ``export`` (``demo`` lives with the classification task)."""
import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def image_size(text: str):
    """argparse type: ``S`` (square) or ``HxW``, positive integers."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"must be S or HxW, got {text!r}")
    sizes = tuple(positive_int(p) for p in parts)
    return sizes[0] if len(sizes) == 1 else sizes


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("info", help="per-module parameters and FLOPs (paper Tables 16/17)")
    p.add_argument("model", help="model name, e.g. lolvit_s, lolvit_x")
    p.add_argument("--size", nargs=2, type=positive_int, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.set_defaults(func=_info)

    p = sub.add_parser("predict", help="top-k classes of images with a trained checkpoint",
                       description="Images are preprocessed as the checkpoint was evaluated in training "
                                   "(input size, crop, interpolation, mean/std).")
    p.add_argument("--checkpoint", required=True, help="checkpoint path (.safetensors with its .json)")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--img-size", type=image_size, default=None, metavar="SIZE",
                   help="input size S or HxW (default: the checkpoint's)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export a checkpoint or a model name to ONNX or OpenVINO IR (dynamic batch/height/width)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint path")
    src.add_argument("--model", help="model name (random weights)")
    p.add_argument("--output", required=True, help="output .onnx path (.xml for --format openvino)")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx",
                   help="onnx (default) or openvino (IR .xml/.bin, fp32 weights; needs the openvino extra)")
    p.add_argument("--size", nargs=2, type=positive_int, default=None, metavar=("H", "W"),
                   help="example input size (default: the checkpoint's, else 224 224)")
    p.add_argument("--no-fuse", action="store_true", help="keep BatchNorm layers unfused")
    p.set_defaults(func=_export)


def _info(args: argparse.Namespace) -> int:
    import lolvit  # noqa: F401  (registers the models)
    from lolvit.io import build_model
    from lolvit.models import LOLViT
    from lolvit.tasks.summary import format_table

    model = build_model(args.model, {"num_classes": args.num_classes}, "model")
    if not isinstance(model, LOLViT):
        raise ValueError(f"lolvit info describes LOLViT models (lolvit_s, lolvit_x), not {args.model!r}")
    c = model.config
    print(f"{args.model}: {c.attention} attention, L={c.depths}, fold={c.folds}, patch={c.patches}, heads={c.heads}")
    print(format_table(model, args.model, tuple(args.size)))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from lolvit.io import load_checkpoint
    from lolvit.tasks.predict import predict_images

    model = load_checkpoint(args.checkpoint)
    for result in predict_images(model, args.images, args.topk, img_size=args.img_size, batch_size=args.batch_size):
        print(result["path"])
        for label, prob in result["topk"]:
            print(f"  {prob:7.2%}  {label}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import lolvit
    from lolvit.export import check_writable, export_onnx, export_openvino
    from lolvit.io import build_model

    check_writable(args.output)
    model = lolvit.load_checkpoint(args.checkpoint) if args.checkpoint else build_model(args.model, {}, "--model")
    if not args.no_fuse:
        lolvit.fuse(model)
    exporter = export_openvino if args.format == "openvino" else export_onnx
    path = exporter(model, args.output, tuple(args.size) if args.size else None)
    print(f"wrote {path}")
    return 0
