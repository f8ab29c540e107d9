import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from lolvit.io import load_checkpoint
from lolvit.tasks.classify import TrainConfig, train
from lolvit.tasks.classify.train import read_train_state

TINY = dict(model="lolvit_s", data="digits", img_size=32, batch_size=16, train_subset=48, val_subset=40,
            epochs=2, threads=1, progress=False, tensorboard=False, warmup_epochs=0.5)


def cfg(tmp_path, name, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def test_one_epoch_writes_checkpoint_logs_and_curves(tmp_path):
    res = train(cfg(tmp_path, "run", epochs=1, plot=True, ema=0.9))
    out = tmp_path / "run"
    for f in ("last.safetensors", "last.json", "best.safetensors", "state.safetensors",
              "results.csv", "curves.png", "recipe.yaml"):
        assert (out / f).is_file(), f
    assert res["epoch"] == 1 and 0.0 <= res["val_top1"] <= 100.0 and "ema_val_top1" in res
    model = load_checkpoint(out / "last")
    assert model.class_names == [str(i) for i in range(10)]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    tensors, state = read_train_state(out)
    assert state["epoch"] == 1 and state["config"]["model"] == "lolvit_s"
    assert any(k.startswith("ema.") for k in tensors)


def _interrupt_at(step):
    def hook(trainer):
        if trainer.global_step == step:
            signal.raise_signal(signal.SIGINT)
    return hook


@pytest.mark.parametrize("opt,stop_step", [("adamw", 4), ("sgd", 3)])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, opt, stop_step):
    extra = dict(opt=opt, ema=0.5, mixup=0.2 if opt == "sgd" else 0.0)
    full = train(cfg(tmp_path, "full", **extra))
    stopped = train(cfg(tmp_path, "cut", **extra), on_step=_interrupt_at(stop_step))
    assert stopped["interrupted"] and stopped["step_in_epoch"] == (stop_step - 1) % 3 + 1
    resumed = train(cfg(tmp_path, "cut", resume=True, **extra))
    for k in ("train_loss", "train_top1", "val_loss", "val_top1", "ema_val_top1"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-6), k
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(tmp_path / "cut" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_bad_inputs_fail_clearly_and_keep_saved_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training state to resume"):
        train(cfg(tmp_path, "none", resume=True))
    with pytest.raises(ValueError, match="unknown model"):
        train(cfg(tmp_path, "x", model="not_a_model"))
    with pytest.raises(ValueError, match="optimizer"):
        train(cfg(tmp_path, "x", opt="lamb"))
    with pytest.raises(ValueError, match="img_size"):
        train(cfg(tmp_path, "x", img_size=16))
    train(cfg(tmp_path, "done", epochs=1, train_subset=16, val_subset=10))
    before = (tmp_path / "done" / "last.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg(tmp_path, "done", epochs=1, train_subset=16, val_subset=10))
    with pytest.raises(ValueError, match="different recipe.*model"):
        train(cfg(tmp_path, "done", epochs=1, train_subset=16, val_subset=10, model="lolvit_x", resume=True))
    assert (tmp_path / "done" / "last.safetensors").read_bytes() == before


def test_image_folder_with_corrupt_file_trains_and_counts_it(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, color in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            d = tmp_path / "ds" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (20, 20), color).save(d / f"{i}.png")
    (tmp_path / "ds" / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    res = train(cfg(tmp_path, "folder", data=str(tmp_path / "ds"), epochs=1, train_subset=None, val_subset=None,
                    batch_size=4))
    assert res["skipped_images"] == 1 and res["train_images"] == 9 and res["val_images"] == 8


def test_tensorboard_scalars_written(tmp_path):
    pytest.importorskip("tensorboard")
    train(cfg(tmp_path, "tb", epochs=1, tensorboard=True))
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
