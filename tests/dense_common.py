"""Shared helpers for the dense-prediction tests (issue 5): offline guard and tiny generated data."""
import os
import socket
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="lolvit-yolo-cfg-"))
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

FASHION = Path("/usr/share/datasets/fashion-mnist")


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every outgoing connection or DNS lookup raises, and is recorded: the test fails at teardown
    if anything tried the network, even when the caller swallowed the error."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:] if args else kwargs))
        raise NetworkBlocked(f"network access attempted during an offline test: {attempts[-1]}")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    yield
    assert not attempts, f"network access attempted: {attempts}"


def need_fashion():
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed")


def make_tiny_scenes(root: Path, n_train: int = 12, n_val: int = 6, imgsz: int = 64):
    from lolvit.tasks.dense.generate import make_scenes

    need_fashion()
    make_scenes(root, n_train=n_train, n_val=n_val, imgsz=imgsz, max_objects=2, min_scale=0.3, max_scale=0.6)
    return root


def add_bad_samples(images: Path, labels: Path, polygons: bool = False) -> int:
    """Add broken samples to a YOLO split: undecodable image, malformed label line, box outside the
    image, empty label file, image without label. Returns how many images must be dropped."""
    (images / "bad_decode.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (labels / "bad_decode.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    src = sorted(images.glob("train_*.jpg"))[0].read_bytes()
    for name, text in (
        ("bad_line", "3 0.5 abc 0.2\n"),
        ("bad_outside", "1 1.40 0.50 0.30 0.30\n" if not polygons else "1 1.2 0.1 1.5 0.1 1.5 0.4\n"),
        ("bad_empty", ""),
    ):
        (images / f"{name}.jpg").write_bytes(src)
        (labels / f"{name}.txt").write_text(text)
    (images / "bad_nolabel.jpg").write_bytes(src)
    return 3  # decode, malformed line, outside box; empty/no label = background images


def json_tail(printed: str):
    """The JSON document a command printed last (after any progress/log lines)."""
    import json

    start = 0 if printed.startswith("{") else printed.index("\n{\n") + 1
    return json.loads(printed[start:])
