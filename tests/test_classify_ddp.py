import json
import os
import subprocess
import sys
from pathlib import Path

import lolvit
from lolvit.tasks.classify.train import read_train_state

SRC = str(Path(lolvit.__file__).resolve().parents[1])


def test_torchrun_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lolvit", "train", "--model", "lolvit_s", "--data", "digits", "--img-size", "32",
           "--epochs", "1", "--batch-size", "8", "--train-subset", "40", "--val-subset", "21", "--threads", "1",
           "--device", "cpu", "--no-progress", "--no-tensorboard", "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count("epoch 1/1:") == 1, p.stdout  # rank 0 logs alone
    _, state = read_train_state(out)
    assert state["epoch"] == 1 and (out / "last.safetensors").is_file()
    row = state["history"][0]
    # every val image counted once across the two ranks (21 = 11 + 10): accuracy is a multiple of 1/21
    assert abs(row["val_top1"] * 21 / 100 - round(row["val_top1"] * 21 / 100)) < 1e-6
