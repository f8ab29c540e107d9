import numpy as np
import pytest
import timm
from PIL import Image

from lolvit.cli import main
from lolvit.io import save_checkpoint
from lolvit.tasks.summary import PAPER_ROWS


@pytest.mark.parametrize("name", ["lolvit_s", "lolvit_x"])
def test_info_reproduces_tables(name, capsys):
    assert main(["info", name, "--size", "64", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("Conv ", "GhostNetBlock", "LOLViTBlock"))]
    assert len(rows) == 10
    for line, paper in zip(rows, PAPER_ROWS[name]):
        assert f"{paper:,}" in line
        if line.startswith(("Conv ", "GhostNetBlock")):
            assert "+0.00%" in line
    assert "Backbone total" in out and "GFLOPs" in out


def test_info_rejects_other_models(capsys):
    assert main(["info", "resnet18"]) == 2
    assert "describes LOLViT models" in capsys.readouterr().err


@pytest.fixture()
def checkpoint(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=3).eval()
    return save_checkpoint(model, tmp_path / "ck", class_names=["cat", "dog", "bird"],
                           extra={"data_config": {"input_size": (3, 64, 64)}})


def test_predict_topk_with_class_names(tmp_path, checkpoint, capsys):
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.randint(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    assert main(["predict", "--checkpoint", str(checkpoint), "--topk", "2", *paths]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == paths[0] and len(out) == 6
    assert all(any(c in line for c in ("cat", "dog", "bird")) for line in out[1:3])


def test_predict_bad_inputs(tmp_path, checkpoint, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(checkpoint), str(bad)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "missing.png")]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "nope"), str(bad)]) == 2
    assert "not found" in capsys.readouterr().err
