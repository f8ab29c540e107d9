"""``lolvit bench attention|fawa|models|scaling|deploy|train``: argument parsing only (see
runner.run_bench). A bench is one module of this package with ``FULL``/``QUICK`` settings,
``run(threads=..., **settings)`` and ``report(payload, out_dir, command)``; it is registered by its
name in ``runner.BENCHES`` and one help line in ``SPECS`` below (plus its own flags in
``register``); each flag's ``dest`` is a keyword of its ``run``."""
import argparse
import shlex
import sys


SPECS = {
    "attention": "attention mechanisms on one feature map, 1-4 stacked layers (Fig. 4)",
    "fawa": "FAWA key generation vs the pooling route, 224-1024 px (Fig. 8)",
    "models": "latency/throughput of LOLViT and timm models, several runtimes (Tables 2-4, 7, 13)",
    "scaling": "time and memory against input size; fitted exponent in the token count",
    "deploy": "LOLViT vs timm peers in eager/compile/ONNX Runtime/OpenVINO, 224-640 px, GFLOP/s",
    "train": "training-step images/s of LOLViT vs timm peers (32 px batch 128, 224 px batch 32)",
    "detect": "LOLViT-YOLO vs yolov8n/yolo11n: params, FLOPs, latency in eager/ONNX Runtime/OpenVINO (Tables 5/7)",
}


def _shape(text: str):
    """'SIZExBATCH' -> (size, batch)."""
    try:
        size, batch = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZExBATCH such as 224x32, got {text!r}") from None
    return size, batch


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("bench", help="speed and memory benchmarks (paper Figs. 4/8, Tables 2-4/7/13)")
    benches = p.add_subparsers(dest="bench", metavar="BENCH")
    for name, help_ in SPECS.items():
        b = benches.add_parser(name, help=help_)
        b.add_argument("--quick", action="store_true", help="tiny sizes, finishes in well under a minute")
        b.add_argument("--threads", type=int, default=None,
                       help="torch/runtime threads (default 2; 1 with --quick, which then survives a loaded machine)")
        b.add_argument("--out", default=None, help=f"output folder (default runs/bench/{name})")
        b.add_argument("--repeats", type=int, default=None, help="timed samples per case")
        b.add_argument("--warmup", type=int, default=None, help="warm-up calls per case")
        b.add_argument("--budget", dest="budget_s", type=float, default=None,
                       help="seconds after which a case stops sampling (at least 3 samples)")
        if name == "attention":
            b.add_argument("--shape", type=int, nargs=4, default=None, metavar=("B", "C", "H", "W"))
            b.add_argument("--layers", dest="repeats_layers", type=int, nargs="+", default=None,
                           help="stack depths ('Repeat'), default 1 2 3 4")
            b.add_argument("--mechanisms", nargs="+", default=None)
        if name in ("fawa", "models", "scaling"):
            b.add_argument("--sizes", type=int, nargs="+", default=None, help="input sizes (px)")
        if name == "models":
            b.add_argument("--models", nargs="+", default=None)
            b.add_argument("--backends", nargs="+", default=None,
                           help="eager fused onnxruntime openvino compile")
            b.add_argument("--batches", type=int, nargs="+", default=None)
        if name == "detect":  # issue 9: lolvit.bench.detect
            b.add_argument("--sizes", type=int, nargs="+", default=None, help="input sizes (px), default 320 640")
            b.add_argument("--models", nargs="+", default=None, help="LOLViT YAML names or ultralytics models")
            b.add_argument("--backends", nargs="+", default=None, help="eager onnxruntime openvino")
        if name == "scaling":
            b.add_argument("--mechanisms", nargs="+", default=None)
            b.add_argument("--models", nargs="+", default=None)
        if name in ("deploy", "train"):
            b.add_argument("--models", nargs="+", default=None)
            b.add_argument("--shapes" if name == "deploy" else "--settings", type=_shape, nargs="+", default=None,
                           metavar="SIZExBATCH", help="input size and batch pairs, e.g. 224x1 640x1 224x32")
        if name == "deploy":
            b.add_argument("--runtimes", nargs="+", default=None,
                           help="eager eager_cl compile onnxruntime openvino (default: all but compile)")
            b.add_argument("--compile", action="store_true", help="add the torch.compile runtime (lolvit.compile)")
        if name == "train":
            b.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                           help="model and input in channels-last memory")
        b.set_defaults(func=_run)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _run(args: argparse.Namespace) -> int:
    from .runner import run_bench

    options = {k: v for k, v in vars(args).items()
               if k not in ("command", "bench", "func", "quick", "threads", "out", "compile")}
    if getattr(args, "compile", False):
        from importlib import import_module

        module = import_module(f"{__package__}.{args.bench}")
        base = options.get("runtimes") or (module.QUICK if args.quick else module.FULL)["runtimes"]
        options["runtimes"] = tuple(base) + (() if "compile" in base else ("compile",))
    for key in ("shape", "repeats_layers", "mechanisms", "sizes", "models", "backends", "batches", "shapes",
                "settings", "runtimes"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    command = "lolvit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    threads = args.threads if args.threads is not None else (1 if args.quick else 2)
    result = run_bench(args.bench, args.quick, threads, args.out,
                       command=command or f"lolvit bench {args.bench}", **options)
    print(result["markdown"])
    print("wrote " + ", ".join(str(p) for p in result["paths"].values()))
    return 0
