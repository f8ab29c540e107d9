"""Training failure behaviour (issue 12): atomic saves under SIGKILL, run folders, bad options and data."""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import lolvit
from lolvit.cli import main
from lolvit.tasks.classify import TrainConfig, train
from lolvit.tasks.classify.train import read_train_state

SRC = str(Path(lolvit.__file__).resolve().parents[1])
TINY = dict(model="lolvit_s", data="digits", img_size=32, batch_size=16, train_subset=32, val_subset=20, epochs=2,
            threads=1, progress=False, tensorboard=False, warmup_epochs=0.5, seed=1)

RUN = textwrap.dedent("""
    import os, signal, sys
    kill_at = int(sys.argv[2])
    real, calls = os.replace, [0]
    def replace(a, b):
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls[0] += 1
        real(a, b)
        if calls[0] == kill_at and sys.argv[3] == "after":
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    from lolvit.tasks.classify import TrainConfig, train
    train(TrainConfig(**{**%r, "out": sys.argv[1]}))
    print("REPLACES", calls[0])
""" % TINY)


def _run(out, kill_at=-1, when="before"):
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", RUN, str(out), str(kill_at), when], env=env, capture_output=True,
                          text=True, timeout=300)


def test_sigkill_at_every_point_of_a_save_then_resume_matches(tmp_path):
    """Kill the process at every point of the last epoch's saves; a resume
    must always succeed and end with the weights of an uninterrupted run."""
    ref = _run(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    total = int(ref.stdout.split("REPLACES")[-1])
    reference = load_file(str(tmp_path / "ref" / "last.safetensors"))
    per_epoch = 6  # best (2 files), state, last (2 files), results.csv
    # before each rename (a complete temporary file is left behind), and after the last one
    points = [(k, "before") for k in range(total - per_epoch, total)] + [(total - 1, "after")]
    for k, when in points:
        out = tmp_path / f"k{k}{when}"
        p = _run(out, k, when)
        assert p.returncode == -9, (k, when, p.stderr[-2000:])
        try:
            res = train(TrainConfig(**{**TINY, "out": str(out), "resume": True}))
            assert res["epoch"] == 2
        except ValueError as e:  # killed after the final state was written: only "finished" may be said
            assert "already finished 2 of 2" in str(e), (k, when, e)
        got = load_file(str(out / "last.safetensors"))
        for name, t in reference.items():
            torch.testing.assert_close(got[name], t, rtol=0, atol=0, msg=f"{k} {when} {name}")
        assert len(read_train_state(out)[1]["history"]) == 2
        assert (out / "results.csv").read_text().count("\n") == 3
        assert not list(out.glob(".*.tmp")), (k, when)


def test_out_folder_with_foreign_files_is_refused_and_exist_ok_clears_only_run_files(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"mine": true}')
    with pytest.raises(ValueError, match="not empty and holds no lolvit run"):
        train(TrainConfig(**{**TINY, "epochs": 1, "out": str(foreign), "exist_ok": True}))
    assert (foreign / "config.json").read_text() == '{"mine": true}' and len(list(foreign.iterdir())) == 1

    run = tmp_path / "run"
    train(TrainConfig(**{**TINY, "epochs": 1, "out": str(run), "tensorboard": True}))
    (run / "notes.txt").write_text("keep me")
    old_events = set((run / "tensorboard").glob("events.*"))
    train(TrainConfig(**{**TINY, "epochs": 1, "out": str(run), "tensorboard": True, "exist_ok": True}))
    assert (run / "notes.txt").read_text() == "keep me"
    assert not old_events & set((run / "tensorboard").glob("events.*"))


def test_batch_size_one_is_refused_and_a_single_image_remainder_is_counted(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        train(TrainConfig(**{**TINY, "batch_size": 1, "out": str(tmp_path / "b1")}))
    res = train(TrainConfig(**{**TINY, "epochs": 1, "train_subset": 33, "out": str(tmp_path / "r")}))
    assert res["single_image_batches"] == 1


def _folder(root, classes, bad_val=False):
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(3):
                if split == "val" and bad_val:
                    (d / f"{i}.png").write_bytes(b"not an image")
                else:
                    Image.new("RGB", (32, 32), (30 * i, 0, 90)).save(d / f"{i}.png")


def test_all_unreadable_val_split_and_one_class_fail_clearly(tmp_path):
    _folder(tmp_path / "bad", ["a", "b"], bad_val=True)
    with pytest.raises(ValueError, match="no readable images.*6 unreadable"):
        train(TrainConfig(**{**TINY, "data": str(tmp_path / "bad"), "batch_size": 2, "train_subset": None,
                             "val_subset": None, "out": str(tmp_path / "r1")}))
    _folder(tmp_path / "one", ["only"])
    with pytest.raises(ValueError, match="at least two"):
        train(TrainConfig(**{**TINY, "data": str(tmp_path / "one"), "train_subset": None, "val_subset": None,
                             "out": str(tmp_path / "r2")}))


def test_decompression_bomb_is_skipped_and_counted(tmp_path):
    _folder(tmp_path / "ds", ["a", "b"])
    Image.new("L", (14000, 14000)).save(tmp_path / "ds" / "train" / "a" / "bomb.png")  # > 2x Pillow's limit
    res = train(TrainConfig(**{**TINY, "data": str(tmp_path / "ds"), "epochs": 1, "batch_size": 3,
                               "train_subset": None, "val_subset": None, "out": str(tmp_path / "r")}))
    assert res["skipped_images"] == 1 and res["train_images"] == 7


def test_fashion_mnist_missing_opens_no_socket(tmp_path, monkeypatch):
    import lolvit.tasks.classify.data as data

    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", ())

    def no_network(*args, **kwargs):
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(FileNotFoundError, match="--download"):
        train(TrainConfig(**{**TINY, "data": "fashion-mnist", "data_root": str(tmp_path), "out": str(tmp_path / "r")}))


@pytest.mark.parametrize("flags,message", [
    (["--device", "tpu"], "device must be"),
    (["--threads", "-1"], "threads must be a positive integer"),
    (["--randaug", "garbage"], "randaug"),
    (["--crop-scale", "2", "1"], "crop_scale"),
    (["--hflip", "5"], "hflip must be a probability"),
    (["--epochs", "0"], "epochs must be a positive"),
    (["--model-kwargs", "[1]"], "JSON object"),
])
def test_bad_flags_give_one_line_errors(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) if message == "JSON object" else _nothing():
        code = main(["train", "--data", "digits", "--out", str(tmp_path / "r"), *flags])
        assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_out_on_a_file_or_unwritable_place(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["train", "--data", "digits", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--out", "/proc/lolvit-run"]) == 2
    assert "cannot write the run folder" in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_damaged_training_state_is_refused_by_checksum(tmp_path):
    """A flipped bit in the saved optimizer/model tensors must not resume silently (issue 12 #10)."""
    out = tmp_path / "r"
    train(TrainConfig(**{**TINY, "epochs": 1, "out": str(out)}))
    read_train_state(out)
    path = out / "state.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x10  # inside the last tensor's bytes (the header is at the front)
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum mismatch"):
        read_train_state(out)
    with pytest.raises(ValueError, match="checksum mismatch"):
        train(TrainConfig(**{**TINY, "epochs": 2, "out": str(out), "resume": True}))
