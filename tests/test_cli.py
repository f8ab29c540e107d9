import os

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


def _one_line_error(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and expect in err, err
    return err


def test_bad_inputs_get_one_line_errors(tmp_path, capsys):
    """Issue 12 #16: each bad file/field/flag -> exit 2 and one line naming it."""
    model = timm.create_model("lolvit_s", num_classes=2, depths=1)
    save_checkpoint(model, tmp_path / "ck", class_names=["a", "b"])
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(img)
    pred = ["predict", "--checkpoint", str(tmp_path / "ck"), str(img)]
    weights = (tmp_path / "ck.safetensors").read_bytes()
    good = (tmp_path / "ck.json").read_text()
    (tmp_path / "ck.safetensors").write_bytes(weights[:100])
    _one_line_error(capsys, pred, "ck.safetensors is not a readable safetensors file")
    (tmp_path / "ck.safetensors").write_bytes(b"\0" * 64)
    _one_line_error(capsys, pred, "not a readable safetensors file")
    (tmp_path / "ck.safetensors").write_bytes(weights)
    for text, expect in (("null", "must hold a JSON object"), ("[]", "must hold a JSON object"),
                         ('{"format": "lolvit-checkpoint"}', "field 'model' is missing"),
                         ('{"format": "lolvit-checkpoint", "model": "lolvit_s", "extra": 5}', "field 'extra'"),
                         ('{"format": "lolvit-checkpoint", "model": "nonsense_net"}', "field 'model' is 'nonsense_net'")):
        (tmp_path / "ck.json").write_text(text)
        _one_line_error(capsys, pred, expect)
    (tmp_path / "ck.json").write_text(good)
    _one_line_error(capsys, ["info", "nonsense_net"], "unknown model 'nonsense_net'")
    _one_line_error(capsys, ["export", "--model", "nonsense_net", "--output", str(tmp_path / "m.onnx")],
                    "unknown model 'nonsense_net'")
    _one_line_error(capsys, ["predict", "--checkpoint", str(tmp_path / "ck"), str(tmp_path / "no.png")], "image not found")
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["val", str(tmp_path / "ck"), "--data", "digits", "--out", str(tmp_path / "file")],
                    "is a file, not a folder")
    _one_line_error(capsys, ["val", str(tmp_path / "ck"), "--data", "digits", "--threads", "-1"],
                    "--threads must be an integer >= 1")


def test_export_path_is_checked_before_conversion(tmp_path, capsys, monkeypatch):
    import lolvit.export

    def never(*a, **k):
        raise AssertionError("conversion started")

    monkeypatch.setattr(lolvit.export.torch.export, "export", never)
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["export", "--model", "lolvit_s", "--output", str(tmp_path / "file" / "m.onnx")],
                    "cannot write the export path")
    _one_line_error(capsys, ["export", "--model", "lolvit_s", "--output", str(tmp_path)], "is a directory")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o500)
        _one_line_error(capsys, ["export", "--model", "lolvit_s", "--output", str(tmp_path / "ro" / "m.onnx")],
                        "cannot write the export path")
