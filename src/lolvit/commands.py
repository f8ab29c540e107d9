"""Core commands: ``info``, ``predict``, ``export`` (``demo`` lives with the classification task)."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("info", help="per-module parameters and FLOPs (paper Tables 16/17)")
    p.add_argument("model", help="model name, e.g. lolvit_s, lolvit_x")
    p.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(func=_info)

    p = sub.add_parser("predict", help="top-k classes of images with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint path (.safetensors with its .json)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="export a checkpoint or a model name to ONNX or OpenVINO IR (dynamic batch/height/width)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint path")
    src.add_argument("--model", help="model name (random weights)")
    p.add_argument("--output", required=True, help="output .onnx path (.xml for --format openvino)")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx",
                   help="onnx (default) or openvino (IR .xml/.bin, fp32 weights; needs the openvino extra)")
    p.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--no-fuse", action="store_true", help="keep BatchNorm layers unfused")
    p.set_defaults(func=_export)


def _info(args: argparse.Namespace) -> int:
    import timm

    import lolvit  # noqa: F401  (registers the models)
    from lolvit.models import LOLViT
    from lolvit.tasks.summary import format_table

    model = timm.create_model(args.model, num_classes=args.num_classes)
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
    for result in predict_images(model, args.images, args.topk):
        print(result["path"])
        for label, prob in result["topk"]:
            print(f"  {prob:7.2%}  {label}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import timm

    import lolvit
    from lolvit.export import export_onnx, export_openvino

    model = lolvit.load_checkpoint(args.checkpoint) if args.checkpoint else timm.create_model(args.model)
    if not args.no_fuse:
        lolvit.fuse(model)
    exporter = export_openvino if args.format == "openvino" else export_onnx
    path = exporter(model, args.output, tuple(args.size))
    print(f"wrote {path}")
    return 0
