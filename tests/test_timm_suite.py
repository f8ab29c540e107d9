"""timm's own model tests (``tests/test_models.py`` of the installed timm's sdist) run on lolvit.

The sdist is fetched with pip (``pip download --no-deps --no-binary :all: timm==<installed>``) into
a cache, once: at set-up by ``make test`` (``python tests/test_timm_suite.py``) or on the first run
of this test. ``'lolvit'`` is added to the suite's ``FEAT_INTER_FILTERS`` so that the feature and
intermediate tests select it too, and only lolvit models are run (``-k lolvit``).
"""
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import timm

import lolvit

MIN_PASSED = 22  # every timm test that selects lolvit_s / lolvit_x with timm 1.0.31


def cache_dir() -> Path:
    """``LOLVIT_TIMM_TESTS`` or ``<venv>/timm-tests`` (``make test``), else a folder under the temp dir."""
    if os.environ.get("LOLVIT_TIMM_TESTS"):
        return Path(os.environ["LOLVIT_TIMM_TESTS"])
    venv = Path(sys.prefix) / "timm-tests"
    if os.access(sys.prefix, os.W_OK) or venv.is_dir():
        return venv
    return Path(tempfile.gettempdir()) / "lolvit-timm-tests"


def fetch(version: str = timm.__version__) -> Path:
    """Download and extract the timm sdist's ``tests/`` (patched for lolvit); returns the suite's folder."""
    root = cache_dir() / f"timm-{version}"
    suite = root / "tests" / "test_models.py"
    if suite.is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f"timm-{version}.tar.gz"
    if not archive.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
               f"timm=={version}", "-d", str(root.parent)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode or not archive.is_file():
            raise RuntimeError(f"could not fetch the timm {version} sdist ({' '.join(cmd)}): {proc.stderr[-500:]}")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root.parent))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"timm-{version}/tests/") and m.isfile()]
        tar.extractall(tmp, members=members, filter="data")
    text = (tmp / f"timm-{version}" / "tests" / "test_models.py").read_text()
    marker = "FEAT_INTER_FILTERS = ["
    if marker not in text:
        raise RuntimeError(f"timm {version}'s tests/test_models.py has no {marker!r} line to patch")
    (tmp / f"timm-{version}" / "tests" / "test_models.py").write_text(text.replace(marker, marker + "'lolvit', ", 1))
    os.replace(tmp / f"timm-{version}", root)  # atomic: a half-extracted suite is never used
    tmp.rmdir()
    return root


def run_suite(root: Path, junit: Path) -> subprocess.CompletedProcess:
    src = str(Path(lolvit.__file__).resolve().parents[1])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    cmd = [sys.executable, "-m", "pytest", "tests/test_models.py", "-q", "-p", "lolvit", "-k", "lolvit",
           "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=", "-W", "ignore", f"--junitxml={junit}"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_timm_model_suite(tmp_path):
    try:
        root = fetch()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        pytest.fail(f"timm's test suite is not available: {e}. Fetch it with `python {__file__}` (needs the package index).")
    proc = run_suite(root, tmp_path / "junit.xml")
    assert (tmp_path / "junit.xml").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failures, errors, skipped = (int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped"))
    passed = total - failures - errors - skipped
    report = f"timm {timm.__version__} suite on lolvit: {passed} passed, {failures} failed, {errors} errors, {skipped} skipped"
    assert failures == 0 and errors == 0, report + "\n" + proc.stdout[-6000:]
    assert passed >= MIN_PASSED, report
    assert proc.returncode == 0, report + "\n" + proc.stdout[-3000:]


if __name__ == "__main__":
    print(fetch())
