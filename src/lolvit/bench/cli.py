"""``lolvit bench attention|fawa|models|scaling``: argument parsing only (see runner.run_bench)."""
import argparse
import shlex
import sys


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("bench", help="speed and memory benchmarks (paper Figs. 4/8, Tables 2-4/7/13)")
    benches = p.add_subparsers(dest="bench", metavar="BENCH")
    specs = {
        "attention": "attention mechanisms on one feature map, 1-4 stacked layers (Fig. 4)",
        "fawa": "FAWA key generation vs the pooling route, 224-1024 px (Fig. 8)",
        "models": "latency/throughput of LOLViT and timm models, several runtimes (Tables 2-4, 7, 13)",
        "scaling": "time and memory against input size; fitted exponent in the token count",
        "detect": "LOLViT-YOLO vs yolov8n/yolo11n: params, FLOPs, latency in eager/ONNX Runtime/OpenVINO (Tables 5/7)",
    }
    for name, help_ in specs.items():
        b = benches.add_parser(name, help=help_)
        b.add_argument("--quick", action="store_true", help="tiny sizes, finishes in well under a minute")
        b.add_argument("--threads", type=int, default=2, help="torch/runtime threads (default 2)")
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
        b.set_defaults(func=_run)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _run(args: argparse.Namespace) -> int:
    from .runner import run_bench

    options = {k: v for k, v in vars(args).items() if k not in ("command", "bench", "func", "quick", "threads", "out")}
    for key in ("shape", "repeats_layers", "mechanisms", "sizes", "models", "backends", "batches"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    command = "lolvit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None
    result = run_bench(args.bench, args.quick, args.threads, args.out,
                       command=command or f"lolvit bench {args.bench}", **options)
    print(result["markdown"])
    print("wrote " + ", ".join(str(p) for p in result["paths"].values()))
    return 0
