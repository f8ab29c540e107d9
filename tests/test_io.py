import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import timm
import torch

import lolvit
from safetensors.torch import save_file
from timm.data import resolve_model_data_config

from lolvit.io import (atomic_write_json, checkpoint_paths, load_checkpoint, model_spec, read_safetensors,
                       read_state_dict, save_checkpoint)


def test_roundtrip(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=4, in_chans=1, depths=(1, 2, 1)).eval()
    path = save_checkpoint(model, tmp_path / "ck", class_names=list("abcd"), extra={"epoch": 3})
    weights, config = checkpoint_paths(path)
    assert weights.suffix == ".safetensors" and config.is_file()
    meta = json.loads(config.read_text())
    assert meta["model"] == "lolvit_s" and meta["class_names"] == list("abcd")
    loaded = load_checkpoint(tmp_path / "ck.safetensors")
    assert loaded.class_names == list("abcd") and loaded.checkpoint_extra == {"epoch": 3}
    assert meta["fused"] is False and meta["version"] == 2
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
    with pytest.raises(ValueError, match="model_kwargs.num_classes is 5 but the weights were saved with 2"):
        load_checkpoint(tmp_path / "a")
    meta["model"] = "lolvit_x"
    meta["model_kwargs"] = {"num_classes": 2}
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="field 'model' is 'lolvit_x'"):
        load_checkpoint(tmp_path / "a")
    (tmp_path / "a.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a lolvit checkpoint"):
        load_checkpoint(tmp_path / "a")


def test_legacy_checkpoint_without_spec_still_checks_shapes(tmp_path):
    """Version-1 checkpoints (no spec/checksum in the safetensors metadata) load; shapes are checked."""
    model = timm.create_model("lolvit_s", num_classes=2, depths=1)
    save_file(model.state_dict(), str(tmp_path / "old.safetensors"), metadata={"format": "lolvit-checkpoint"})
    meta = {"format": "lolvit-checkpoint", "version": 1, **model_spec(model), "class_names": None,
            "extra": {"img_size": 32}}
    (tmp_path / "old.json").write_text(json.dumps(meta))
    loaded = load_checkpoint(tmp_path / "old")
    # older checkpoints: their training size with the evaluation transform lolvit used then
    assert resolve_model_data_config(loaded)["input_size"] == (3, 32, 32)
    assert resolve_model_data_config(loaded)["crop_pct"] == 1.0
    meta["model_kwargs"]["num_classes"] = 5
    (tmp_path / "old.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatches.*classifier"):
        load_checkpoint(tmp_path / "old")


def test_names_with_dots_stay_distinct(tmp_path):
    a = timm.create_model("lolvit_s", num_classes=2, depths=1)
    b = timm.create_model("lolvit_s", num_classes=3, depths=1)
    save_checkpoint(a, tmp_path / "d" / "m.v1")
    save_checkpoint(b, tmp_path / "d" / "m.v2")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "m.v1.json", "m.v1.safetensors", "m.v2.json", "m.v2.safetensors"]
    assert load_checkpoint(tmp_path / "d" / "m.v1").num_classes == 2
    assert load_checkpoint(tmp_path / "d" / "m.v2.safetensors").num_classes == 3
    assert checkpoint_paths("x/m.v1.json") == (Path("x/m.v1.safetensors"), Path("x/m.v1.json"))


def test_fused_model_roundtrip(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=3, depths=1)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))  # non-trivial BatchNorm statistics
    model = lolvit.fuse(model.eval())
    save_checkpoint(model, tmp_path / "fused")
    assert json.loads((tmp_path / "fused.json").read_text())["fused"] is True
    loaded = load_checkpoint(tmp_path / "fused")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("field,value", [("activation", "silu"), ("cache", False), ("patches", [2, 2, 2]),
                                         ("attention", "mhsa")])
def test_json_fields_that_change_behaviour_are_verified(tmp_path, field, value):
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "a")
    meta = json.loads((tmp_path / "a.json").read_text())
    meta["model_kwargs"][field] = value
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"model_kwargs.{field} is"):
        load_checkpoint(tmp_path / "a")


def test_unknown_keys_are_rejected_by_name(tmp_path):
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "a")
    good = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps({**good, "model_kwargs": {**good["model_kwargs"], "atention": "x"}}))
    with pytest.raises(ValueError, match="unknown model_kwargs.*atention"):
        load_checkpoint(tmp_path / "a")
    (tmp_path / "a.json").write_text(json.dumps({**good, "colour": 1}))
    with pytest.raises(ValueError, match="unknown field.*colour"):
        load_checkpoint(tmp_path / "a")


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))


def test_bit_flipped_weights_fail_the_checksum(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=2, depths=1)
    weights = save_checkpoint(model, tmp_path / "a")
    tensors, meta = read_safetensors(weights)
    assert set(tensors) == set(model.state_dict()) and len(meta["sha256"]) == 64
    assert json.loads(meta["spec"])["model"] == "lolvit_s"
    _flip_last_byte(weights)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "a")
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_state_dict(weights)


@pytest.mark.parametrize("content,match", [
    ("null", "must hold a JSON object, not NoneType"),
    ("[1, 2]", "must hold a JSON object, not list"),
    ('{"format": "lolvit-checkpoint"}', "field 'model' is missing"),
    ('{"format": "lolvit-checkpoint", "model": "lolvit_s", "extra": [1]}', "field 'extra' must be a dict"),
    ('{"format": "lolvit-checkpoint", "model": "lolvit_s", "model_kwargs": "x"}', "field 'model_kwargs' must be"),
    ('{"format": "lolvit-checkpoint", "model": 3}', "field 'model' must be a str"),
    ('{"format": "lolvit-checkpoint", "model": "lolvit_s", "class_names": [1, 2]}', "list of strings"),
    ("{not json", "is not valid JSON"),
])
def test_bad_config_json_names_file_and_field(tmp_path, content, match):
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "a")
    (tmp_path / "a.json").write_text(content)
    with pytest.raises((ValueError, TypeError), match=match) as info:
        load_checkpoint(tmp_path / "a")
    assert "a.json" in str(info.value)


def test_unknown_model_name_and_damaged_weights(tmp_path):
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "a")
    weights = tmp_path / "a.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="a.safetensors is not a readable safetensors file"):
        load_checkpoint(tmp_path / "a")
    weights.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "a")
    (tmp_path / "b.json").write_text(json.dumps({"format": "lolvit-checkpoint", "model": "lolvit_q"}))
    save_file({}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="unknown model 'lolvit_q'"):
        load_checkpoint(tmp_path / "b")


def test_class_names_must_match_the_classifier(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=3, depths=1)
    with pytest.raises(ValueError, match="class_names has 2 names but the model has 3 classes"):
        save_checkpoint(model, tmp_path / "a", class_names=["x", "y"])
    assert not list(tmp_path.iterdir())
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(model, tmp_path / "a", extra={"t": torch.zeros(1)})
    assert not list(tmp_path.iterdir())
    save_checkpoint(model, tmp_path / "a", class_names=["x", "y", "z"])
    meta = json.loads((tmp_path / "a.json").read_text())
    meta["class_names"] = ["x", "y"]
    (tmp_path / "a.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="class_names has 2 names but the model has 3 classes"):
        load_checkpoint(tmp_path / "a")


def test_preprocessing_travels_with_the_checkpoint(tmp_path):
    model = timm.create_model("lolvit_s", num_classes=2, in_chans=1, depths=1)
    dc = {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bilinear",
          "mean": [0.29, 0.29, 0.29], "std": [0.35, 0.35, 0.35]}
    save_checkpoint(model, tmp_path / "a", class_names=["p", "q"], extra={"data_config": dc})
    loaded = load_checkpoint(tmp_path / "a")
    cfg = resolve_model_data_config(loaded)
    assert cfg["input_size"] == (1, 32, 32) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == pytest.approx((0.29,)) and cfg["std"] == pytest.approx((0.35,))
    assert loaded.pretrained_cfg["label_names"] == ["p", "q"]
    # saving the loaded model again keeps its preprocessing
    save_checkpoint(loaded, tmp_path / "b")
    assert json.loads((tmp_path / "b.json").read_text())["data_config"]["input_size"] == [1, 32, 32]
    # a model straight from timm.create_model records timm's defaults
    save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "c")
    assert json.loads((tmp_path / "c.json").read_text())["data_config"]["input_size"] == [3, 224, 224]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        save_checkpoint(timm.create_model("lolvit_s", num_classes=2, depths=1), tmp_path / "a")
        atomic_write_json(tmp_path / "r.json", {"x": 1})
    finally:
        os.umask(old)
    for name in ("a.safetensors", "a.json", "r.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


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
