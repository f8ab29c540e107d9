"""One entry point for every bench: pick full or quick settings, run, write the report."""
import importlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

BENCHES = ("attention", "fawa", "models", "scaling", "deploy", "train", "detect")


def default_out(name: str) -> Path:
    return Path("runs") / "bench" / name


def run_bench(
    name: str, quick: bool = False, threads: int = 2, out: Optional[str] = None,
    command: Optional[str] = None, **overrides: Any,
) -> Dict[str, Any]:
    """Run bench ``name`` (one of :data:`BENCHES`) with its FULL or QUICK settings, overridden by
    ``overrides`` (None values ignored), and write JSON/markdown/PNG under ``out``
    (default ``runs/bench/<name>``). Returns ``{"payload", "paths", "markdown"}``."""
    if name not in BENCHES:
        raise ValueError(f"unknown bench {name!r}; choose one of {list(BENCHES)}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    module = importlib.import_module(f"{__package__}.{name}")
    settings = dict(module.QUICK if quick else module.FULL)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    payload = module.run(threads=threads, **settings)
    payload["quick"] = bool(quick)
    payload["command"] = command or f"lolvit bench {name}" + (" --quick" if quick else "")
    out_dir = Path(out) if out else default_out(name)
    result = module.report(payload, os.fspath(out_dir), payload["command"])
    return dict(payload=payload, **result)
