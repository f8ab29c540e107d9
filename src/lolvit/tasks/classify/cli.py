"""``lolvit train``, ``lolvit val``, ``lolvit ablate``, ``lolvit demo``: argument parsing only."""
import argparse
import json


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="lolvit_s", help="lolvit_s, lolvit_x or any timm model name")
    p.add_argument("--data", default="digits", help="digits, fashion-mnist, or a folder with train/ and val/ class folders")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST *-ubyte[.gz] files")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--opt", choices=["adamw", "sgd"], default="adamw", help="AdamW lr 1e-3 or SGD lr 0.01 (paper app. E)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    p.add_argument("--randaug", default=None, help="timm RandAugment string, e.g. rand-m9-mstd0.5")
    p.add_argument("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"))
    p.add_argument("--hflip", type=float, default=0.5)
    p.add_argument("--ema", type=float, default=0.0, help="model EMA decay (0 = off), e.g. 0.999")
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="disable AMP (used on CUDA only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, default=None, help="train on a fixed class-balanced subset")
    p.add_argument("--val-subset", type=int, default=None)
    p.add_argument("--model-kwargs", type=json.loads, default={}, help='JSON, e.g. \'{"attention": "mhsa"}\'')
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")


def _config(args: argparse.Namespace):
    from .train import TrainConfig

    return TrainConfig(
        model=args.model, data=args.data, out=getattr(args, "out", "runs/train"), epochs=args.epochs,
        batch_size=args.batch_size, img_size=args.img_size, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, mixup=args.mixup, cutmix=args.cutmix,
        randaug=args.randaug, crop_scale=tuple(args.crop_scale), hflip=args.hflip, ema=args.ema,
        drop_rate=args.drop_rate, amp=args.amp, seed=args.seed, train_subset=args.train_subset,
        val_subset=args.val_subset, model_kwargs=args.model_kwargs, data_root=args.data_root, workers=args.workers,
        threads=args.threads, device=args.device, resume=getattr(args, "resume", False),
        exist_ok=getattr(args, "exist_ok", False), progress=args.progress, tensorboard=args.tensorboard,
    )


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("train", help="train a classifier (LOLViT or any timm model); torchrun for DDP")
    _train_args(p)
    p.add_argument("--out", default="runs/train", help="run folder: checkpoints, results.csv, curves.png, tensorboard/")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--exist-ok", action="store_true", help="overwrite a finished run in --out")
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

    p = sub.add_parser("ablate", help="paper ablation tables 9, 10, 12, 13, 14, 24 on a reduced schedule")
    p.add_argument("tables", nargs="+", help="table numbers, e.g. 13 14")
    _train_args(p)
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--rows", type=int, default=None, help="only the first N rows of each table")
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


def _ablate(args: argparse.Namespace) -> int:
    from .ablate import run_ablation

    run_ablation(args.tables, _config(args), args.out, args.rows)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    r = run_demo(args.out, quick=args.quick, threads=args.threads, seed=args.seed, progress=args.progress)
    return 0 if (r["passed"] or args.quick) else 1
