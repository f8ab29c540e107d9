"""Harder generated scenes (issue 9 #3): object count, clutter, overlap and occluder options of
``make_scenes`` / ``lolvit data make-scenes``."""
import numpy as np
import pytest
from PIL import Image

from dense_common import need_fashion, no_network  # noqa: F401
from lolvit.cli import main
from lolvit.tasks.dense.generate import make_scenes


def _labels(root, split="train"):
    return {p.name: p.read_text() for p in sorted((root / "det" / "labels" / split).glob("*.txt"))}


def _image(root, stem="train_00000"):
    return np.asarray(Image.open(root / "det" / "images" / "train" / f"{stem}.jpg"), dtype=np.float32)


def test_object_count_and_overlap(tmp_path, no_network):
    need_fashion()
    counts = make_scenes(tmp_path, 4, 1, 96, max_objects=5, seed=1, min_objects=5, max_overlap=1.0)
    assert counts["objects"] == 5 * 5  # every try is placed when any overlap is allowed
    assert all(len(t.splitlines()) == 5 for t in _labels(tmp_path).values())
    sparse = make_scenes(tmp_path / "sparse", 4, 1, 96, max_objects=5, seed=1, min_objects=5, max_overlap=0.0)
    assert sparse["objects"] < counts["objects"]  # no overlap at all leaves some items out


def test_occluders_and_clutter_change_pixels_not_labels(tmp_path, no_network):
    need_fashion()
    make_scenes(tmp_path / "a", 1, 1, 96, seed=2)
    make_scenes(tmp_path / "b", 1, 1, 96, seed=2, occluders=6)
    make_scenes(tmp_path / "c", 1, 1, 96, seed=2, clutter=0.0)
    assert _labels(tmp_path / "a") == _labels(tmp_path / "b")  # occluders come after the labels of a scene
    assert np.abs(_image(tmp_path / "a") - _image(tmp_path / "b")).mean() > 1.0
    assert np.abs(_image(tmp_path / "a") - _image(tmp_path / "c")).mean() > 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(min_objects=0), "min_objects"), (dict(min_objects=5, max_objects=4), "min_objects"),
    (dict(clutter=-1.0), "clutter"), (dict(max_overlap=1.5), "max_overlap"), (dict(occluders=-1), "occluders"),
])
def test_bad_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scenes(tmp_path, 1, 1, 64, **kwargs)
    assert not (tmp_path / "det").exists()


def test_cli_flags(tmp_path, no_network, capsys):
    need_fashion()
    out = tmp_path / "s"
    assert main(["data", "make-scenes", str(out), "--train", "2", "--val", "1", "--imgsz", "96",
                 "--min-objects", "3", "--max-objects", "3", "--max-overlap", "1", "--min-scale", "0.2",
                 "--max-scale", "0.3", "--clutter", "2", "--occluders", "2"]) == 0
    for text in _labels(out).values():
        rows = [list(map(float, line.split())) for line in text.splitlines()]
        assert len(rows) == 3 and all(w <= 0.3 + 1e-6 and h <= 0.3 + 1e-6 for _, _, _, w, h in rows)
    assert main(["data", "make-scenes", str(tmp_path / "bad"), "--clutter", "-2"]) != 0
    assert "clutter" in capsys.readouterr().err
