import json
import pickle

import pytest
import timm
import torch

import lolvit
from lolvit.io import checkpoint_paths, load_checkpoint, read_state_dict, save_checkpoint


def test_roundtrip(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=4, in_chans=1, depths=(1, 2, 1)).eval()
    path = save_checkpoint(model, tmp_path / "ck", class_names=list("abcd"), extra={"epoch": 3})
    weights, config = checkpoint_paths(path)
    assert weights.suffix == ".safetensors" and config.is_file()
    meta = json.loads(config.read_text())
    assert meta["model"] == "lolvit_s" and meta["class_names"] == list("abcd")
    loaded = load_checkpoint(tmp_path / "ck.safetensors")
    assert loaded.class_names == list("abcd") and loaded.checkpoint_extra == {"epoch": 3}
    assert loaded.config.depths == (1, 2, 1)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_timm_model_roundtrip(tmp_path):
    model = timm.create_model("mobilevit_xxs", num_classes=3).eval()
    save_checkpoint(model, tmp_path / "mv")
    loaded = load_checkpoint(tmp_path / "mv")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config not found"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2), tmp_path / "a")
    (tmp_path / "a.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights not found"):
        load_checkpoint(tmp_path / "a")


def test_mismatched_checkpoint(tmp_path):
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2), tmp_path / "a")
    meta = json.loads((tmp_path / "a.json").read_text())
    meta["model_kwargs"]["num_classes"] = 5
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatches.*classifier"):
        load_checkpoint(tmp_path / "a")
    meta["model"] = "lolvit_x"
    meta["model_kwargs"] = {"num_classes": 2}
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(tmp_path / "a")
    (tmp_path / "a.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a lolvit checkpoint"):
        load_checkpoint(tmp_path / "a")


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


def test_pt_files_read_weights_only(tmp_path):
    state = timm.create_model("lolvit_s", num_classes=2).state_dict()
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    assert set(read_state_dict(tmp_path / "w.pt")) == set(state)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": _Boom()}, f)
    with pytest.raises(Exception) as info:
        read_state_dict(tmp_path / "evil.pt")
    assert not isinstance(info.value, SystemExit)
    with pytest.raises(ValueError, match="unsupported checkpoint type"):
        (tmp_path / "w.ckpt").write_bytes(b"")
        read_state_dict(tmp_path / "w.ckpt")


def test_top_level_api():
    assert callable(lolvit.save_checkpoint) and callable(lolvit.load_checkpoint) and callable(lolvit.fuse)
