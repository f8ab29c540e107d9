"""``lolvit train``, ``lolvit val``, ``lolvit compare``, ``lolvit ablate``, ``lolvit demo``: argument parsing only.

Training options default to the recipe (``--recipe``, else the data's default recipe); a flag
given on the command line overrides the recipe's value.
"""
import argparse
import json
from typing import Any, Dict

SUPPRESS = argparse.SUPPRESS


def _json_mapping(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"attention\": \"mhsa\"}'")
    return value


def _train_args(p: argparse.ArgumentParser) -> None:
    """Recipe options (default: the recipe's value) and runtime options."""
    p.add_argument("--recipe", default=None,
                   help="shipped recipe name (digits, fashion-mnist, imagenet, imagefolder) or a YAML file; "
                        "default: chosen by --data")
    r = p.add_argument_group("recipe options (override the recipe)")
    r.add_argument("--model", default=SUPPRESS, help="lolvit_s, lolvit_x or any timm model name")
    r.add_argument("--data", default=SUPPRESS, help="digits, fashion-mnist, or a folder with train/ and val/ class folders")
    r.add_argument("--epochs", type=int, default=SUPPRESS)
    r.add_argument("--batch-size", type=int, default=SUPPRESS, help="per process")
    r.add_argument("--img-size", type=int, default=SUPPRESS)
    r.add_argument("--opt", choices=["adamw", "sgd"], default=SUPPRESS, help="AdamW lr 1e-3 or SGD lr 0.01 (paper app. E)")
    r.add_argument("--lr", type=float, default=SUPPRESS)
    r.add_argument("--weight-decay", type=float, default=SUPPRESS)
    r.add_argument("--warmup-epochs", type=float, default=SUPPRESS)
    r.add_argument("--min-lr-ratio", type=float, default=SUPPRESS)
    r.add_argument("--label-smoothing", type=float, default=SUPPRESS)
    r.add_argument("--mixup", type=float, default=SUPPRESS, help="mixup alpha (0 = off)")
    r.add_argument("--cutmix", type=float, default=SUPPRESS, help="cutmix alpha (0 = off)")
    r.add_argument("--randaug", default=SUPPRESS, help="timm RandAugment string, e.g. rand-m9-mstd0.5")
    r.add_argument("--train-crop", choices=["rrc", "pad"], default=SUPPRESS,
                   help="rrc: random-resized crops (ImageNet); pad: shifts of a padded image (small images)")
    r.add_argument("--crop-scale", type=float, nargs=2, default=SUPPRESS, metavar=("MIN", "MAX"))
    r.add_argument("--crop-padding", type=int, default=SUPPRESS, help="pixels of zero padding for --train-crop pad")
    r.add_argument("--hflip", type=float, default=SUPPRESS)
    r.add_argument("--re-prob", type=float, default=SUPPRESS, help="random erasing probability")
    r.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest"], default=SUPPRESS)
    r.add_argument("--val-crop-pct", type=float, default=SUPPRESS)
    r.add_argument("--mean", type=float, nargs=3, default=SUPPRESS)
    r.add_argument("--std", type=float, nargs=3, default=SUPPRESS)
    r.add_argument("--ema", type=float, default=SUPPRESS, help="model EMA decay (0 = off), e.g. 0.999")
    r.add_argument("--drop-rate", type=float, default=SUPPRESS)
    r.add_argument("--no-amp", dest="amp", action="store_false", default=SUPPRESS, help="disable AMP (used on CUDA only)")
    r.add_argument("--seed", type=int, default=SUPPRESS)
    r.add_argument("--train-subset", type=int, default=SUPPRESS, help="train on a fixed class-balanced subset")
    r.add_argument("--val-subset", type=int, default=SUPPRESS)
    r.add_argument("--model-kwargs", type=_json_mapping, default=SUPPRESS, help='JSON, e.g. \'{"attention": "mhsa"}\'')
    r.add_argument("--init-from", "--initial-checkpoint", dest="init_from", default=SUPPRESS, metavar="CHECKPOINT",
                   help="fine-tune: start from a checkpoint's weights (a classifier of another class count is re-initialised)")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST *-ubyte[.gz] files")
    p.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if it is not found")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", action="store_true", help="NHWC activations (faster convolutions on CPU)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")


RUNTIME_ARGS = ("data_root", "download", "workers", "threads", "device", "channels_last", "progress", "tensorboard")
RECIPE_ARGS = ("model", "data", "epochs", "batch_size", "img_size", "opt", "lr", "weight_decay", "warmup_epochs",
               "min_lr_ratio", "label_smoothing", "mixup", "cutmix", "randaug", "train_crop", "crop_scale",
               "crop_padding", "hflip", "re_prob", "interpolation", "val_crop_pct", "mean", "std", "ema", "drop_rate",
               "amp", "seed", "train_subset", "val_subset", "model_kwargs", "init_from")


def _config(args: argparse.Namespace, **fixed: Any):
    """TrainConfig: the saved recipe of ``--resume DIR``, else ``--recipe`` (or the data's
    default), then the flags given on the command line."""
    from .train import TrainConfig, read_train_state

    given = {k: getattr(args, k) for k in RECIPE_ARGS if hasattr(args, k)}
    runtime = {k: getattr(args, k) for k in RUNTIME_ARGS}
    resume = getattr(args, "resume", None)
    if resume:
        if args.recipe:
            raise ValueError("--resume takes the recipe from the run folder; do not pass --recipe with it")
        _, state = read_train_state(resume)
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
        return TrainConfig(**{**saved, **given, **runtime, "out": resume, "resume": True, "recipe": resume, **fixed})
    out = {"out": args.out} if getattr(args, "out", None) else {}
    return TrainConfig.from_recipe(args.recipe, **{**given, **runtime, **out,
                                                   "exist_ok": getattr(args, "exist_ok", False), **fixed})


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("train", help="train a classifier (LOLViT or any timm model); torchrun for DDP",
                       description="Options default to the recipe (--recipe, else the data's default recipe); "
                                   "flags override it. The run folder gets recipe.yaml, which reproduces the run.")
    _train_args(p)
    p.add_argument("--out", default="runs/train", help="run folder: checkpoints, results.csv, curves.png, tensorboard/")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR (or --out) with its saved recipe; --epochs N extends a finished run")
    p.add_argument("--exist-ok", action="store_true", help="overwrite a run in --out (removes only the files a run writes)")
    p.set_defaults(func=_train)

    p = sub.add_parser("val", help="top-1/top-5, per-class accuracy, confusion matrix, latency of a checkpoint")
    p.add_argument("checkpoint", help="PATH.safetensors (with PATH.json next to it)")
    p.add_argument("--data", required=True, help="digits, fashion-mnist or a folder with val/")
    p.add_argument("--data-root", default=None)
    p.add_argument("--img-size", type=int, default=None, help="default: the size the checkpoint was trained at")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="folder for val.md and confusion.png (default: next to the checkpoint)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_val)

    p = sub.add_parser("compare", help="train several models with one recipe and seeds; table + learning curves")
    p.add_argument("models", nargs="+", help="model names (lolvit_s, mobilevit_xs, ...)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    _train_args(p)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--latency-repeats", type=_non_negative_int, default=30, help="0: no latency column")
    p.add_argument("--no-train", action="store_true", help="only tabulate runs that exist (no training)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("ablate", help="paper ablation grids (Tables 9-14, 24, attention) with one recipe")
    p.add_argument("tables", nargs="+", help="grid names: 9 10 11 12 13 14 24 attention")
    _train_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--rows", type=int, default=None, help="only the first N rows of each table")
    p.add_argument("--no-train", action="store_true", help="only tabulate runs that exist (no training)")
    p.set_defaults(func=_ablate)

    p = sub.add_parser("demo", help="train lolvit_s on digits, then compare CPU latency with MobileViT")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="1 epoch on 128 images (smoke test, no accuracy target)")
    p.add_argument("--threads", type=int, default=None, help="default: 2, or 1 when the machine is busy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from .train import train

    if args.resume is True:
        args.resume = args.out
    res = train(_config(args))
    return 130 if res.get("interrupted") else 0


def _val(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluate import format_report, validate

    out = args.out or str(Path(args.checkpoint).parent / "val")
    r = validate(args.checkpoint, args.data, out, args.img_size, args.batch_size, args.data_root, args.workers, args.threads)
    print(format_report(r))
    print(f"wrote {out}/val.md and {out}/confusion.png")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    base = _config(args, out=args.out, exist_ok=False)
    compare(args.models, base, args.out, seeds=args.seeds, train_missing=not args.no_train,
            latency_repeats=args.latency_repeats)
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from .ablate import run_ablation

    base = _config(args, out=args.out, exist_ok=False)
    run_ablation(args.tables, base, args.out, args.rows, seeds=args.seeds, train_missing=not args.no_train)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    r = run_demo(args.out, quick=args.quick, threads=args.threads, seed=args.seed, progress=args.progress)
    return 0 if (r["passed"] or args.quick) else 1
