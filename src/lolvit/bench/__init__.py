"""Speed and memory benchmarks (``lolvit bench ...``); each writes JSON, markdown and a PNG.

Layering: may import ``nn``, ``models`` and ``tasks``; nothing below imports ``bench``.
"""
from .runner import BENCHES, default_out, run_bench

__all__ = ["BENCHES", "default_out", "run_bench"]
