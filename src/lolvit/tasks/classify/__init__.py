"""Image classification: datasets, training (single process or DDP), evaluation, ablations, demo."""
from .data import build_dataset
from .evaluate import EvalResult, evaluate, validate
from .train import TrainConfig, Trainer, train

__all__ = ["EvalResult", "TrainConfig", "Trainer", "build_dataset", "evaluate", "train", "validate"]
