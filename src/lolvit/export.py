"""ONNX export with dynamic batch, height and width (torch.export + ONNX translation)."""
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

EXPORT_MIN_SIZE = 64  # a 1-pixel /32 map would be specialised as a constant by torch.export


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    input_size: Sequence[int] = (224, 224),
    in_chans: Optional[int] = None,
    dynamic: bool = True,
    max_size: int = 4096,
) -> Path:
    """Export ``model`` (put in eval mode) to ONNX: input ``images`` (B, C, H, W), output ``output``.

    With ``dynamic``, batch, height and width are symbolic (H and W from 64 up to
    ``max_size``). Requires the ``onnx`` and ``onnxscript`` packages.
    """
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'lolvit[export]'") from e
    model = model.eval()
    if in_chans is None:
        in_chans = getattr(model, "in_chans", 3)
    h, w = int(input_size[0]), int(input_size[1])
    # batch 2 as the example: a batch of 1 would be specialised as a constant
    example = torch.randn(2, in_chans, h, w)
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=4096)
        height = torch.export.Dim("height", min=EXPORT_MIN_SIZE, max=max_size)
        width = torch.export.Dim("width", min=EXPORT_MIN_SIZE, max=max_size)
        dynamic_shapes = ({0: batch, 2: height, 3: width},)
    with torch.no_grad():
        # shape checks of the fold/window reshapes become runtime asserts instead of guards
        program = torch.export.export(
            model, (example,), dynamic_shapes=dynamic_shapes, strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(program, (example,), input_names=["images"], output_names=["output"], dynamo=True)
    onnx_program.save(str(path))
    return path


def export_openvino(
    model: nn.Module,
    path: Union[str, Path],
    input_size: Sequence[int] = (224, 224),
    in_chans: Optional[int] = None,
    dynamic: bool = True,
    max_size: int = 4096,
) -> Path:
    """Export ``model`` to OpenVINO IR (``path`` = the ``.xml``; weights go to the ``.bin`` next to
    it, kept fp32): the ONNX graph of :func:`export_onnx` (same input/output names and dynamic
    axes) converted by ``openvino.convert_model``. Requires the ``openvino`` extra.

    Run it with ``{"INFERENCE_PRECISION_HINT": "f32"}`` to get fp32 results: OpenVINO's CPU
    default on bf16-capable CPUs is bf16 inference.
    """
    import os
    import tempfile

    os.environ.setdefault("CI", "true")  # no OpenVINO telemetry
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO export needs openvino: pip install 'lolvit[openvino]'") from e
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"OpenVINO output must be a .xml path (weights go to the .bin beside it), got {str(path)!r}")
    with tempfile.TemporaryDirectory(prefix="lolvit-ov-") as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", input_size, in_chans, dynamic, max_size)
        ov_model = ov.convert_model(str(onnx_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path
