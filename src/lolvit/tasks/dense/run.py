"""Run folders of the dense tasks (SSD, multi-task): what classification training writes, for
training loops written as one function per epoch.

``OUT/`` holds:

- ``last.safetensors`` + ``last.json``: the model after the latest epoch (``load_ssd``/``load_multitask``);
- ``state.safetensors``: model, optimizer, schedule, history and the run's configuration in ONE file
  renamed into place after each epoch, so a kill leaves the previous or the new epoch, never a mix
  (``--resume`` continues from it);
- ``results.csv`` (one row per epoch) and ``tensorboard/`` (when tensorboard is installed), written by
  classification's :class:`~lolvit.tasks.classify.train.RunLogger`;
- ``curves.png``: losses and validation metrics per epoch.
"""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn


__all__ = ["DenseRun", "STATE_FILE", "read_run_state", "plot_dense_curves"]

PathLike = Union[str, Path]
STATE_FILE = "state.safetensors"
STATE_FORMAT = "lolvit-dense-state"
RUN_FILES = ("last.safetensors", "last.json", STATE_FILE, "results.csv", "curves.png")


def read_run_state(out: PathLike, kind: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(tensors, state) of the ``kind`` run in ``out`` (checksum verified); FileNotFoundError/ValueError
    name the problem."""
    from ..classify.train import read_train_state

    tensors, state = read_train_state(Path(out), STATE_FORMAT, f"{kind} run")
    if state.get("kind") != kind:
        raise ValueError(f"{Path(out) / STATE_FILE} is not a {kind} run (kind {state.get('kind')!r})")
    return tensors, state


def _optimizer_state(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
    state: Dict[int, Dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("optimizer."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta["scalars"].items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class DenseRun:
    """One training run in folder ``out``: refuses to overwrite another run, restores on ``resume``,
    and after each epoch writes the state, ``last``, ``results.csv``, TensorBoard and (at the end)
    the curves. ``config`` is what ``--resume`` needs to rebuild the run (JSON-able)."""

    def __init__(self, out: PathLike, kind: str, config: Dict[str, Any], resume: bool = False,
                 tensorboard: bool = True):
        from ..classify.train import RunLogger

        self.out, self.kind, self.config = Path(out), kind, dict(config)
        if self.out.suffix in (".safetensors", ".json", ".pt") or self.out.is_file():
            raise ValueError(f"--out {self.out} must be a run folder (it receives last.safetensors, results.csv, ...), "
                             f"not a file name")
        self.history: List[Dict[str, Any]] = []
        self.epoch = 0
        self._resume_state: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None
        if resume:
            self._resume_state = read_run_state(self.out, kind)
            state = self._resume_state[1]
            self.history, self.epoch = state["history"], state["epoch"]
        else:
            taken = [n for n in RUN_FILES if (self.out / n).exists()]
            if taken:
                raise ValueError(f"--out {self.out} already holds a run ({', '.join(taken)}): "
                                 f"--resume continues it, or choose another folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the run folder --out {self.out}: {e.strerror or e}") from None
        self.logger = RunLogger(self.out, tensorboard, resume_epoch=self.epoch if resume else None)

    @staticmethod
    def stored_config(out: PathLike, kind: str) -> Dict[str, Any]:
        """The configuration a run in ``out`` was started with (for ``--resume``)."""
        return read_run_state(out, kind)[1]["config"]

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> int:
        """Load model, optimizer and schedule on resume; returns the first epoch to train (0-based)."""
        if self._resume_state is None:
            return 0
        tensors, state = self._resume_state
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        _load_optimizer_state(opt, tensors, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        self._resume_state = None
        return self.epoch

    def epoch_end(self, row: Dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                  save_last: Callable[[Path], Path]) -> None:
        """Record epoch ``row`` (with its ``epoch`` number) and write the state, ``last`` and the logs."""
        from ..classify.train import write_train_state

        self.history.append(row)
        self.epoch = int(row["epoch"])
        opt_t, opt_meta = _optimizer_state(opt)
        tensors = {**opt_t, **{f"model.{k}": v for k, v in model.state_dict().items()}}
        state = {"kind": self.kind, "config": self.config, "epoch": self.epoch, "history": self.history,
                 "optimizer": opt_meta, "scheduler": sched.state_dict()}
        write_train_state(self.out, tensors, state, STATE_FORMAT)
        save_last(self.out / "last")
        self.logger.log(self.history)

    def close(self, title: str = "") -> Optional[Path]:
        """Close the logs and draw ``curves.png`` (None when no epoch ran)."""
        self.logger.close()
        if not self.history:
            return None
        return plot_dense_curves(self.history, self.out / "curves.png", title)


def plot_dense_curves(history: List[Dict[str, Any]], path: PathLike, title: str = "") -> Path:
    """Per-epoch losses (``*loss*`` columns) and validation metrics (``val_*`` columns) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [int(r["epoch"]) for r in history]
    keys = list(history[-1])
    losses = [k for k in keys if "loss" in k]
    metrics = [k for k in keys if k.startswith("val_") and "loss" not in k]
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 4), squeeze=False)
    for k in losses:
        axes[0][0].plot(ep, [float(r.get(k, float("nan"))) for r in history], "o-", label=k)
    axes[0][0].set_xlabel("epoch"), axes[0][0].set_ylabel("loss"), axes[0][0].legend(), axes[0][0].grid(alpha=0.3)
    if metrics:
        for k in metrics:
            axes[0][1].plot(ep, [float(r.get(k, float("nan"))) for r in history], "o-", label=k[4:])
        axes[0][1].set_xlabel("epoch"), axes[0][1].set_ylabel("validation"), axes[0][1].legend()
        axes[0][1].grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
