"""``lolvit.compile``: the fused model under ``torch.compile`` with dynamic batch, height and width."""
from typing import Any

import torch
import torch.nn as nn

from .nn.fuse import fuse


def compile_model(model: nn.Module, dynamic: bool = True, fused: bool = True, **kwargs: Any) -> nn.Module:
    """Fold BN (:func:`lolvit.fuse`, channels-last) unless ``fused=False``, then
    ``torch.compile(model, dynamic=dynamic, **kwargs)`` (inductor; fp32 CPU inference).

    With ``dynamic=True`` batch, height and width are symbolic from the first call on, so new
    input sizes reuse the compiled graph instead of recompiling. Make the first call with batch
    >= 2 and H != W: dynamo specialises size-1 dimensions and gives equal sizes one symbol, so a
    batch-1 or square first call recompiles once when the batch grows or H and W differ. The first
    call compiles (tens of seconds on a small CPU; ``TORCHINDUCTOR_CACHE_DIR`` keeps the cache).
    The model is put in eval mode; call it under ``torch.inference_mode()`` or ``no_grad``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"lolvit.compile expects an nn.Module, got {type(model).__name__}")
    model = fuse(model) if fused else model.eval()
    return torch.compile(model, dynamic=dynamic, **kwargs)
