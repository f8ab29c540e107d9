"""Core commands: ``info``, ``predict``, ``demo``."""
import argparse


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("info", help="per-module parameters and FLOPs (paper Tables 16/17)")
    p.add_argument("model", help="model name, e.g. lolvit_s, lolvit_x")
    p.add_argument("--size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    import timm

    import lolvit  # noqa: F401  (registers the models)
    from lolvit.models import LOLViT
    from lolvit.tasks.summary import format_table

    model = timm.create_model(args.model, num_classes=args.num_classes)
    if not isinstance(model, LOLViT):
        raise ValueError(f"lolvit info describes LOLViT models (lolvit_s, lolvit_x), not {args.model!r}")
    print(f"{args.model}: {model.config.attention} attention, L={model.config.depths}, "
          f"fold={model.config.folds}, patch={model.config.patches}, heads={model.config.heads}")
    print(format_table(model, args.model, tuple(args.size)))
    return 0
