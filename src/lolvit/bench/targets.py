"""The issue's efficiency targets, checked against the JSON of finished bench runs.

``targets_table(root)`` reads ``root/<bench dir>/<bench>.json`` (whichever exist) and returns a
markdown table: target, measured value (ratio of medians from one run), met or not.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union


def _load(root: Path, folder: str, name: str) -> Optional[Dict[str, Any]]:
    path = root / folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _find(rows: List[Dict[str, Any]], **match: Any) -> Optional[Dict[str, Any]]:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]], key: str = "median_ms") -> Optional[float]:
    return a[key] / b[key] if a and b and b.get(key) else None


def _check(rows: List[Tuple[str, Optional[float], str, bool]], target: str, value: Optional[float],
           fmt: str, ok: bool) -> None:
    rows.append((target, value, fmt, ok))


def targets_table(root: Union[str, Path], folders: Optional[Dict[str, str]] = None) -> str:
    """Markdown table of every target whose inputs are present under ``root``.

    ``folders`` maps a bench to its run folder (default: the bench name). Model rows are read
    from ``models_focus``, ``models``, ``models_b1`` and ``models_b32``; the first run holding a
    (model, backend, size, batch) row wins.
    """
    root = Path(root)
    folders = dict(attention="attention", fawa="fawa", scaling="scaling", **(folders or {}))
    out: List[Tuple[str, Optional[float], str, bool]] = []
    att = _load(root, folders["attention"], "attention")
    if att:
        rows = att["rows"]
        f, m = _find(rows, mechanism="fwa", part="attention", repeat=1), _find(rows, mechanism="mhsa", part="attention", repeat=1)
        t, mem = _ratio(f, m), _ratio(f, m, "peak_mb")
        _check(out, "FWA time <= 0.35x MHSA (attention, 1 layer)", t, ".3f", t is not None and t <= 0.35)
        _check(out, "FWA peak memory <= 0.5x MHSA (attention, 1 layer)", mem, ".3f", mem is not None and mem <= 0.5)
        for other in ("agent", "ssa"):
            r = _ratio(f, _find(rows, mechanism=other, part="attention", repeat=1))
            _check(out, f"FWA faster than {other} (time ratio < 1)", r, ".3f", r is not None and r < 1)
    fw = _load(root, folders["fawa"], "fawa")
    if fw:
        tot = [r for r in fw["rows"] if r["layer"] == "total"]
        big = max(tot, key=lambda r: r["size"]) if tot else None
        if big:
            _check(out, f"FAWA >= 2.7x faster than pooling at {big['size']} px (3 layers)", big["speedup"], ".2f",
                   big["speedup"] >= 2.7)
    model_rows: List[Dict[str, Any]] = []
    for folder in ("models_focus", "models", "models_b1", "models_b32"):
        data = _load(root, folder, "models")
        if data:
            model_rows.extend(data["rows"])
    for size, limit in ((224, 0.5), (384, 0.4)):
        ref = _find(model_rows, model="mobilevit_xs", backend="eager", size=size, batch=1)
        for backend in ("fused", "fused_cl"):
            r = _ratio(_find(model_rows, model="lolvit_x", backend=backend, size=size, batch=1), ref)
            if r is not None:
                _check(out, f"lolvit_x [{backend}] <= {limit}x mobilevit_xs [eager], {size} px, batch 1", r, ".3f",
                       r <= limit)
        ref_cl = _find(model_rows, model="mobilevit_xs", backend="channels_last", size=size, batch=1)
        r = _ratio(_find(model_rows, model="lolvit_x", backend="fused_cl", size=size, batch=1), ref_cl)
        if r is not None:
            _check(out, f"(same, against mobilevit_xs [channels_last]) <= {limit}x, {size} px", r, ".3f", r <= limit)
        s = _find(model_rows, model="lolvit_s", backend="fused_cl", size=size, batch=1)
        for anchor in ("mobilevit_xxs", "ghostnet_100"):
            r = _ratio(s, _find(model_rows, model=anchor, backend="eager", size=size, batch=1))
            if r is not None:
                _check(out, f"lolvit_s [fused_cl] <= {anchor} [eager], {size} px", r, ".3f", r <= 1)
        for name in ("mobilevit_xs", "mobilevit_s"):
            base = _find(model_rows, model=name, backend="eager", size=size, batch=1)
            r = _ratio(base, _find(model_rows, model=f"{name}+fwa", backend="eager", size=size, batch=1))
            if r is not None:
                _check(out, f"{name}+fwa >= 1.78x faster than {name} (eager), {size} px", r, ".2f", r >= 1.78)
    for batch in (1, 32):
        ref = _find(model_rows, model="mobilevit_xs", backend="eager", size=224, batch=batch)
        for backend in ("fused", "fused_cl"):
            x = _find(model_rows, model="lolvit_x", backend=backend, size=224, batch=batch)
            if x and ref:
                r = x["gflops_per_s"] / ref["gflops_per_s"]
                _check(out, f"GFLOP/s lolvit_x [{backend}] / mobilevit_xs [eager], 224 px, batch {batch} "
                            f"({x['gflops_per_s']:.1f} vs {ref['gflops_per_s']:.1f})", r, ".3f", r >= 1)
    sc = _load(root, folders["scaling"], "scaling")
    if sc:
        fits = {(f["kind"], f["name"]): f for f in sc["fits"]}
        for name in ("fwa", "mhsa"):
            f = fits.get(("attention", name))
            if f and f["exponent"] is not None:
                ok = f["exponent"] <= 1.6 if name == "fwa" else True
                _check(out, f"{name} time exponent in token count" + (" <= 1.6" if name == "fwa" else " (reference, ~2)"),
                       f["exponent"], ".2f", ok)
    lines = ["| target | measured | met |", "|---|---|---|"]
    for target, value, fmt, ok in out:
        shown = "-" if value is None else format(value, fmt)
        lines.append(f"| {target} | {shown} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)
