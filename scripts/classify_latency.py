"""Fused batch-1 CPU latency of several classifiers, measured interleaved in one process.

Usage: python scripts/classify_latency.py --size 32 --threads 1 lolvit_s lolvit_x mobilevit_xs ...
"""
import argparse

import torch

from lolvit.tasks.classify.latency import build_fused, interleaved_latency_ms
from lolvit.tasks.summary import count_params


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--num-classes", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = build_fused(a.models, num_classes=a.num_classes)
    lat = interleaved_latency_ms(models, (a.size, a.size), repeats=a.repeats, warmup=5)
    ref = a.models[0]
    print(f"| model | params (M) | latency {a.size}x{a.size} (ms) | vs {ref} |")
    print("|---|---:|---:|---:|")
    for n, m in models.items():
        print(f"| {n} | {count_params(m) / 1e6:.2f} | {lat[n]:.2f} | {lat[n] / lat[ref]:.2f}x |")
    print(f"\nbatch 1, median of {a.repeats} interleaved rounds, {a.threads} thread(s), {a.num_classes}-class heads")


if __name__ == "__main__":
    main()
