import json

import pytest

from lolvit.cli import main
from lolvit.tasks.classify import TrainConfig, train, validate
from lolvit.tasks.classify.ablate import GRIDS, run_ablation


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    train(TrainConfig(model="lolvit_s", data="digits", img_size=32, batch_size=16, epochs=1, train_subset=32,
                      val_subset=20, threads=1, progress=False, tensorboard=False, out=str(out)))
    return out


def test_val_reports_metrics_confusion_and_latency(run_dir, tmp_path):
    r = validate(str(run_dir / "best"), "digits", str(tmp_path), batch_size=64, threads=1, latency_images=5)
    assert r["images"] == 360 and r["img_size"] == 32
    assert 0 <= r["top1"] <= r["top5"] <= 100 and r["latency_ms"] > 0
    assert len(r["per_class"]) == 10
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert "top-1" in (tmp_path / "val.md").read_text()


def test_val_cli_and_bad_checkpoints(run_dir, tmp_path, capsys):
    assert main(["val", str(run_dir / "last.safetensors"), "--data", "digits", "--out", str(tmp_path / "v"),
                 "--threads", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["val", str(tmp_path / "missing.safetensors"), "--data", "digits"]) == 2
    assert "not found" in capsys.readouterr().err
    # a checkpoint whose config names another model: the weights no longer fit
    meta = json.loads((run_dir / "last.json").read_text())
    meta["model"], meta["model_kwargs"] = "lolvit_x", {"num_classes": 10}
    (tmp_path / "other.json").write_text(json.dumps(meta))
    (tmp_path / "other.safetensors").write_bytes((run_dir / "last.safetensors").read_bytes())
    with pytest.raises(ValueError, match="field 'model' is 'lolvit_x' but the weights were saved with 'lolvit_s'"):
        validate(str(tmp_path / "other"), "digits")
    # a 10-class checkpoint on a 2-class folder
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "ds" / "val" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "ds" / "val" / c / "0.png")
    with pytest.raises(ValueError, match="not in the training set|classes"):
        validate(str(run_dir / "last"), str(tmp_path / "ds"))


def test_ablation_writes_markdown_tables(tmp_path):
    base = TrainConfig(data="digits", img_size=32, batch_size=16, epochs=1, train_subset=16, val_subset=10,
                       threads=1, progress=False, tensorboard=False, plot=False)
    res = run_ablation(["13"], base, str(tmp_path), rows=2, latency_repeats=2)
    md = (tmp_path / "table13.md").read_text()
    assert md == res["13"] and md.count("| 243-124-111") == 2 and "latency (ms)" in md
    with pytest.raises(ValueError, match="unknown ablation table"):
        run_ablation(["99"], base, str(tmp_path))
    assert set(GRIDS) == {"9", "10", "11", "12", "13", "14", "24", "attention"}
