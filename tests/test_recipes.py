"""Recipes as files (issue 10): shipped recipes, overrides, per-dataset defaults, reproduction."""
import pytest
import yaml

from lolvit.cli import build_parser, main
from lolvit.tasks.classify import TrainConfig, train
from lolvit.tasks.classify.cli import _config
from lolvit.tasks.classify.recipes import recipe_names
from lolvit.tasks.classify.train import read_train_state

TINY = ["--img-size", "32", "--batch-size", "16", "--train-subset", "32", "--val-subset", "20", "--epochs", "1",
        "--threads", "1", "--no-progress", "--no-tensorboard"]


def parse(*argv):
    return _config(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "imagenet", "imagefolder"])
def test_shipped_recipes_load_and_check(name):
    assert name in recipe_names()
    cfg = TrainConfig.from_recipe(name)
    cfg.check()
    assert cfg.recipe == name


def test_recipe_values_and_flag_overrides():
    cfg = parse("--recipe", "fashion-mnist")
    assert (cfg.data, cfg.img_size, cfg.train_crop, cfg.lr, cfg.epochs) == ("fashion-mnist", 32, "pad", 0.002, 15)
    cfg = parse("--recipe", "fashion-mnist", "--epochs", "3", "--lr", "0.01", "--hflip", "0", "--model", "lolvit_x")
    assert (cfg.epochs, cfg.lr, cfg.hflip, cfg.model, cfg.img_size) == (3, 0.01, 0.0, "lolvit_x", 32)
    assert parse("--recipe", "imagenet", "--no-amp").amp is False


def test_default_recipe_follows_the_data(tmp_path):
    assert parse("--data", "digits").recipe == "digits" and parse("--data", "digits").hflip == 0.0
    fm = parse("--data", "fashion-mnist")
    assert fm.recipe == "fashion-mnist" and fm.train_crop == "pad" and fm.crop_scale == (0.08, 1.0)
    folder = parse("--data", str(tmp_path))
    assert folder.recipe == "imagefolder" and folder.train_crop == "rrc"


def test_bad_recipes_name_file_and_option(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*unknown option.*learning_rate"):
        TrainConfig.from_recipe(str(bad))
    bad.write_text("epochs: three\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: epochs must be int"):
        TrainConfig.from_recipe(str(bad))
    bad.write_text("- epochs\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_recipe(str(bad))
    bad.write_text("epochs: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.from_recipe(str(bad))
    with pytest.raises(FileNotFoundError, match="neither a shipped recipe"):
        TrainConfig.from_recipe("no-such-recipe")


def test_run_folder_recipe_reproduces_first_epoch_loss(tmp_path):
    a = tmp_path / "a"
    assert main(["train", "--recipe", "digits", "--model", "lolvit_s", "--seed", "3", *TINY, "--out", str(a)]) == 0
    written = yaml.safe_load((a / "recipe.yaml").read_text())
    assert written["seed"] == 3 and written["train_subset"] == 32 and written["data"] == "digits"
    b = tmp_path / "b"
    assert main(["train", "--recipe", str(a / "recipe.yaml"), "--threads", "1", "--no-progress",
                 "--no-tensorboard", "--out", str(b)]) == 0
    ha, hb = read_train_state(a)[1]["history"], read_train_state(b)[1]["history"]
    assert ha[0]["train_loss"] == hb[0]["train_loss"] and ha[0]["val_loss"] == hb[0]["val_loss"]
    # a run folder is accepted as --recipe too
    assert parse("--recipe", str(a)).seed == 3


def test_resume_from_run_folder_alone_and_extend(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--recipe", "digits", *TINY, "--out", str(run)]) == 0
    # finished: a clear message, nothing changes
    before = (run / "state.safetensors").read_bytes()
    assert main(["train", "--resume", str(run)]) == 2
    assert "already finished 1 of 1 epochs" in capsys.readouterr().err
    assert (run / "state.safetensors").read_bytes() == before
    # extend: the recipe comes from the run, --epochs grows it
    assert main(["train", "--resume", str(run), "--epochs", "2", "--threads", "1", "--no-progress"]) == 0
    _, state = read_train_state(run)
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["config"]["train_subset"] == 32
    # another recipe value on resume is refused
    assert main(["train", "--resume", str(run), "--epochs", "3", "--lr", "0.5"]) == 2
    assert "different recipe: lr" in capsys.readouterr().err


def test_init_from_adapts_the_classifier(tmp_path):
    import torch
    from PIL import Image

    from lolvit.io import load_checkpoint

    src = tmp_path / "src"
    train(TrainConfig(model="lolvit_s", data="digits", img_size=32, batch_size=16, epochs=1, train_subset=32,
                      val_subset=20, threads=1, progress=False, tensorboard=False, out=str(src)))
    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            d = tmp_path / "ds" / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (40 * i, 80, 0)).save(d / f"{i}.png")
    cfg = TrainConfig(model="lolvit_s", data=str(tmp_path / "ds"), img_size=32, batch_size=4, epochs=1, lr=1e-9,
                      threads=1, progress=False, tensorboard=False, out=str(tmp_path / "ft"), init_from=str(src / "last"))
    train(cfg)
    a, b = load_checkpoint(src / "last"), load_checkpoint(tmp_path / "ft" / "last")
    assert b.num_classes == 3 and a.num_classes == 10
    torch.testing.assert_close(a.stem.conv.weight, b.stem.conv.weight, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="does not fit"):
        train(TrainConfig(**{**cfg.__dict__, "model": "lolvit_x", "out": str(tmp_path / "ft2")}))


def test_compare_trains_tabulates_and_reuses_runs(tmp_path):
    """`lolvit compare`: one run folder per model and seed, compare.md/json + curves; --no-train reuses
    the runs; --latency-repeats 0 leaves the latency column empty instead of failing after training."""
    out = tmp_path / "cmp"
    assert main(["compare", "lolvit_s", "--data", "digits", *TINY, "--out", str(out), "--latency-repeats", "0"]) == 0
    md = (out / "compare.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| lolvit_s |"))
    assert row.split("|")[4].strip() == "-"
    assert (out / "curves.png").is_file() and (out / "runs" / "lolvit_s-s0" / "recipe.yaml").is_file()
    assert main(["compare", "lolvit_s", "--data", "digits", *TINY, "--out", str(out), "--no-train",
                 "--latency-repeats", "2"]) == 0
    row = next(line for line in (out / "compare.md").read_text().splitlines() if line.startswith("| lolvit_s |"))
    assert float(row.split("|")[4]) > 0
