"""Bench reports: one JSON (raw samples, machine, threads, versions), one markdown table and
one PNG plot per bench, written atomically under an output folder."""
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..io import atomic_write_bytes

Column = Tuple[str, str, str]  # (header, row key, format spec)


def _version(module: str) -> Optional[str]:
    try:
        return __import__(module).__version__
    except Exception:  # an optional runtime that is absent or broken is simply not listed
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int, device: str = "cpu") -> Dict[str, Any]:
    """Machine, thread count, library versions and load average at the time of the call."""
    from .. import __version__

    info: Dict[str, Any] = {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
        "versions": {
            "python": platform.python_version(),
            "lolvit": __version__,
            "torch": torch.__version__,
            "timm": _version("timm"),
            "numpy": _version("numpy"),
            "onnxruntime": _version("onnxruntime"),
            "openvino": _version("openvino"),
        },
    }
    return info


def busy_warning(machine: Dict[str, Any]) -> Optional[str]:
    """A warning line when other work shared the CPUs during the run, else None.

    Rule: with ``free = cpu_count - threads`` cores left over by the bench, the machine counts as
    busy when the 1-minute load average at the start exceeded ``free + 0.5``, or the one at the
    end (``load_avg_end``, which includes the bench's own ``threads`` busy threads) exceeded
    ``cpu_count + 0.5``. Timings taken then are slower and noisier than on a quiet machine;
    compare them only as ratios within the run.
    """
    cpus, threads = machine.get("cpu_count"), machine.get("threads")
    if not cpus or threads is None:
        return None
    reasons = []
    start, end = machine.get("load_avg"), machine.get("load_avg_end")
    if start and start[0] > cpus - threads + 0.5:
        reasons.append(f"1-min load average {start[0]:.2f} at start > {cpus - threads + 0.5:g} "
                       f"(= {cpus} CPUs - {threads} bench threads + 0.5)")
    if end and end[0] > cpus + 0.5:
        reasons.append(f"1-min load average {end[0]:.2f} at end > {cpus + 0.5:g} (= {cpus} CPUs + 0.5)")
    if not reasons:
        return None
    return ("WARNING: the machine was busy during this run (" + "; ".join(reasons)
            + "): absolute timings are inflated and noisy, use ratios within the run only.")


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and spec:
        return format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[Dict[str, Any]], columns: Sequence[Column]) -> str:
    """A GitHub markdown table; missing values print as '-'."""
    head = "| " + " | ".join(c[0] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(key), spec) for _, key, spec in columns) + " |" for r in rows]
    return "\n".join([head, sep] + body)


def write_report(
    out_dir: Union[str, Path],
    name: str,
    payload: Dict[str, Any],
    markdown: str,
    plot: Callable[[Any], None],
) -> Dict[str, Path]:
    """Write ``name.json`` (payload), ``name.md`` and ``name.png`` (``plot(figure)`` draws it).

    ``payload["machine"]["busy_warning"]`` is set in the JSON (:func:`busy_warning`, None on a
    quiet machine).

    Returns the three paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = payload.get("machine")
    if isinstance(machine, dict) and "cpu_count" in machine:
        payload = dict(payload, machine=dict(machine, busy_warning=busy_warning(machine)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    atomic_write_bytes(paths["json"], json.dumps(payload, indent=1, default=str).encode())
    atomic_write_bytes(paths["md"], (markdown.rstrip() + "\n").encode())
    fig = plt.figure(figsize=(8, 4.5), dpi=90)
    try:
        plot(fig)
        fig.tight_layout()
        tmp = paths["png"].with_suffix(".tmp.png")
        fig.savefig(tmp)
        os.replace(tmp, paths["png"])
    finally:
        plt.close(fig)
    return paths


def header(title: str, machine: Dict[str, Any], command: str) -> str:
    """Markdown preamble naming the command, machine and threads of a run; it starts with the
    :func:`busy_warning` line when the machine was busy."""
    v = machine["versions"]
    gpu = machine["cuda"] or "none (GPU columns absent)"
    warning = busy_warning(machine)
    return (
        f"## {title}\n\n"
        + (f"> **{warning}**\n\n" if warning else "")
        + f"`{command}`  \n"
        f"{machine['time_utc']}, {machine['cpu']} ({machine['cpu_count']} logical CPUs), "
        f"{machine['threads']} threads, GPU: {gpu}, load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine['load_avg'] or [])}"
        f"{_end_load(machine)}, OMP_WAIT_POLICY={machine.get('env', {}).get('OMP_WAIT_POLICY')}; "
        f"torch {v['torch']}, timm {v['timm']}.\n"
    )


def _end_load(machine: Dict[str, Any]) -> str:
    end = machine.get("load_avg_end")
    return f" (at end {', '.join(f'{x:.2f}' for x in end)})" if end else ""


def ratios(rows: List[Dict[str, Any]], key: str, ref: Dict[str, Any], out_key: str) -> None:
    """Add ``row[out_key] = row[key] / ref[key]`` to every row (None when not comparable)."""
    base = ref.get(key)
    for r in rows:
        value = r.get(key)
        r[out_key] = value / base if value is not None and base else None
