"""ONNX export with dynamic batch, height and width (torch.export + ONNX translation).

The graph's input is ``images`` (axes ``batch``, ``height``, ``width``), its output ``output``
(``batch``, classes). The model's class names and preprocessing are stored as ONNX
``metadata_props``: ``class_names`` and ``data_config`` (JSON), ``model``.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

EXPORT_MIN_SIZE = 64  # smallest dynamic H/W: a 1-pixel /32 map would be specialised as a constant by torch.export
EXAMPLE_MIN_SIZE = 224  # smallest example H/W traced for a dynamic export


def check_writable(path: Union[str, Path]) -> Path:
    """Raise before any work when ``path`` cannot be written (names the path and the reason)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"export path {path} is a directory; give a file name such as {path / 'model.onnx'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write the export path {path}: {e.strerror or e}") from None
    return path


def onnx_metadata(model: nn.Module, data_config: Dict[str, Any]) -> Dict[str, str]:
    """``metadata_props`` of an exported model: class names, preprocessing and model name."""
    names = getattr(model, "class_names", None)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    meta = {"data_config": json.dumps(data_config), "producer": "lolvit"}
    if names is not None:
        meta["class_names"] = json.dumps(list(names))
    if arch:
        meta["model"] = arch
    return meta


def _name_axes(proto, names: Dict[int, str]) -> None:
    """Rename the input's symbolic dims (``s0``...) to ``names`` wherever they appear."""
    mapping = {}
    for i, d in enumerate(proto.graph.input[0].type.tensor_type.shape.dim):
        if d.dim_param and i in names:
            mapping[d.dim_param] = names[i]
    for vi in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    input_size: Optional[Sequence[int]] = None,
    in_chans: Optional[int] = None,
    dynamic: bool = True,
    max_size: int = 4096,
) -> Path:
    """Export ``model`` (put in eval mode) to ONNX: input ``images`` (B, C, H, W), output ``output``.

    ``input_size`` (H, W) defaults to the model's preprocessing size (a loaded checkpoint's).
    With ``dynamic``, batch, height and width are symbolic (H and W from 64 up to ``max_size``);
    below 64 px the graph is exported for that exact H x W (batch still dynamic). Requires the
    ``onnx`` and ``onnxscript`` packages. The path is checked for writability first.
    """
    from .io import current_umask, model_data_config

    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'lolvit[export]'") from e
    path = check_writable(path)
    model = model.eval()
    data_config = model_data_config(model)
    if in_chans is None:
        in_chans = getattr(model, "in_chans", data_config["input_size"][0])
    if input_size is None:
        input_size = data_config["input_size"][-2:]
    h, w = int(input_size[0]), int(input_size[1])
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {(h, w)}")
    data_config["input_size"] = [in_chans, h, w]
    axes = {0: "batch"}
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic and min(h, w) >= EXPORT_MIN_SIZE:
        dims[2] = torch.export.Dim("height", min=EXPORT_MIN_SIZE, max=max_size)
        dims[3] = torch.export.Dim("width", min=EXPORT_MIN_SIZE, max=max_size)
        axes.update({2: "height", 3: "width"})
        # a small example (2x2 last map) makes torch.export specialise the width; trace at >= 224
        h, w = max(h, EXAMPLE_MIN_SIZE), max(w, EXAMPLE_MIN_SIZE)
    # batch 2 as the example: a batch of 1 would be specialised as a constant
    example = torch.randn(2, in_chans, h, w)
    with torch.no_grad():
        # shape checks of the fold/window reshapes become runtime asserts instead of guards
        program = torch.export.export(
            model, (example,), dynamic_shapes=(dims,) if dynamic else None, strict=False,
            prefer_deferred_runtime_asserts_over_guards=True,
        )
    proto = torch.onnx.export(program, (example,), input_names=["images"], output_names=["output"],
                              dynamo=True).model_proto
    _name_axes(proto, axes)
    onnx.helper.set_model_props(proto, onnx_metadata(model, data_config))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def export_openvino(
    model: nn.Module,
    path: Union[str, Path],
    input_size: Optional[Sequence[int]] = None,
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
