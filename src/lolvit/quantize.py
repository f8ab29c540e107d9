"""Post-training static int8 quantization of an exported model (ONNX Runtime or OpenVINO/NNCF).

The model is exported in fp32 (:mod:`lolvit.export`), activation ranges are calibrated on
preprocessed batches of real images, and an int8 model is written:

- ``onnx``: ONNX Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, uint8
  activations), read back by ``onnxruntime.InferenceSession``;
- ``openvino`` (the default: the faster one here, see docs/quantization.md): NNCF's
  ``nncf.quantize`` on the OpenVINO IR (``PERFORMANCE`` preset: symmetric int8 weights and
  activations), written as ``.xml``/``.bin``.

What stays float: the FWA attention (Eqs. 3-4) multiplies two activations (Q K^T, then the
weights by V); its scores pass through DReLu and the keys through a LayerNorm. Those
activation-by-activation matrix products and the normalisations are left in fp32 (ignored
scope / ``nodes_to_exclude``), only weight-bearing layers (convolutions, linear layers) run in
int8. :func:`float_matmuls` names the excluded products.

This module takes an iterable of preprocessed ``(B, C, H, W)`` batches (tensors or arrays); the
CLI (``lolvit quantize``) builds them from a dataset with the checkpoint's preprocessing.
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

FORMATS = ("onnx", "openvino")
INPUT_NAME = "images"


def _as_array(batch: Any) -> np.ndarray:
    arr = batch.detach().cpu().numpy() if hasattr(batch, "detach") else np.asarray(batch)
    if arr.ndim != 4:
        raise ValueError(f"calibration batches must be (B, C, H, W), got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def calibration_batches(batches: Iterable[Any], limit: Optional[int] = None) -> List[np.ndarray]:
    """The first ``limit`` images of ``batches`` as float32 arrays (raises when there are none)."""
    out: List[np.ndarray] = []
    seen = 0
    for b in batches:
        arr = _as_array(b)
        if limit is not None:
            arr = arr[: max(0, limit - seen)]
        if len(arr):
            out.append(arr)
            seen += len(arr)
        if limit is not None and seen >= limit:
            break
    if not out:
        raise ValueError("no calibration images: the dataset gave no batches")
    return out


def float_matmuls(onnx_model) -> List[str]:
    """Names of the ONNX ``MatMul`` nodes that multiply two activations (the attention products),
    i.e. those with no initializer or constant input: they are kept in fp32."""
    consts = {i.name for i in onnx_model.graph.initializer}
    consts |= {o for n in onnx_model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in onnx_model.graph.node
            if n.op_type == "MatMul" and not any(i in consts for i in n.input)]


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over a list of arrays."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(arrays)

    def get_next(self):
        arr = next(self._it, None)
        return None if arr is None else {INPUT_NAME: arr}


def quantize_onnx(fp32_path: Union[str, Path], int8_path: Union[str, Path], batches: Sequence[np.ndarray]) -> Path:
    """ONNX Runtime static QDQ int8 of ``fp32_path`` calibrated on ``batches`` (MinMax ranges)."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise ImportError("ONNX int8 quantization needs onnx and onnxruntime: pip install 'lolvit[export]'") from e
    proto = onnx.load(str(fp32_path))
    quantize_static(
        str(fp32_path), str(int8_path), _Reader(batches),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        per_channel=True, calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Conv", "Gemm", "MatMul"], nodes_to_exclude=float_matmuls(proto),
    )
    return Path(int8_path)


def _ov_float_matmuls(ov_model) -> List[str]:
    """Friendly names of the OpenVINO ``MatMul`` ops with no constant input (attention products)."""
    names = []
    for op in ov_model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        sources = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        if not any(s.get_type_name() == "Constant" or (s.get_type_name() == "Convert" and s.input_value(0)
                   .get_node().get_type_name() == "Constant") for s in sources):
            names.append(op.get_friendly_name())
    return names


def quantize_openvino(fp32_onnx: Union[str, Path], int8_xml: Union[str, Path], batches: Sequence[np.ndarray]) -> Path:
    """NNCF int8 of the OpenVINO model converted from ``fp32_onnx``, written as ``int8_xml``/.bin."""
    os.environ.setdefault("CI", "true")  # no OpenVINO telemetry
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise ImportError("OpenVINO int8 quantization needs openvino and nncf: pip install 'lolvit[openvino]'") from e
    ov_model = ov.convert_model(str(fp32_onnx))
    ignored = nncf.IgnoredScope(names=_ov_float_matmuls(ov_model), types=["MVN"], validate=False)
    # subset_size counts dataset items, here batches
    q = nncf.quantize(ov_model, nncf.Dataset(list(batches)), subset_size=len(batches),
                      preset=nncf.QuantizationPreset.PERFORMANCE, ignored_scope=ignored)
    ov.save_model(q, str(int8_xml), compress_to_fp16=False)
    return Path(int8_xml)


def quantize_file(fp32_onnx: Union[str, Path], output: Union[str, Path], batches: Sequence[np.ndarray],
                  fmt: str = "openvino") -> Path:
    """Static int8 of an fp32 ONNX file (any exporter's, e.g. an ultralytics detector) whose single
    input takes ``batches`` as they are; written to ``output`` only once complete."""
    output = check_output(output, fmt)
    with tempfile.TemporaryDirectory(prefix="lolvit-int8-") as tmp:
        if fmt == "onnx":
            quantize_onnx(fp32_onnx, Path(tmp) / "int8.onnx", batches)
            shutil.move(str(Path(tmp) / "int8.onnx"), str(output))
        else:
            quantize_openvino(fp32_onnx, Path(tmp) / "int8.xml", batches)
            shutil.move(str(Path(tmp) / "int8.bin"), str(output.with_suffix(".bin")))
            shutil.move(str(Path(tmp) / "int8.xml"), str(output))
    return output


def check_output(path: Union[str, Path], fmt: str) -> Path:
    """Validate the format and the output path (suffix, writable) before any work."""
    from .export import check_writable

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    want = ".xml" if fmt == "openvino" else ".onnx"
    if path.suffix != want:
        raise ValueError(f"{fmt} int8 output must be a {want} path, got {str(path)!r}")
    return check_writable(path)


def quantize_model(
    model: nn.Module,
    batches: Iterable[Any],
    output: Union[str, Path],
    fmt: str = "openvino",
    input_size: Optional[Sequence[int]] = None,
    calib_images: Optional[int] = 300,
    fp32_output: Optional[Union[str, Path]] = None,
) -> Path:
    """Export ``model`` in fp32 and write its static int8 quantization to ``output``.

    ``batches``: preprocessed ``(B, C, H, W)`` images (the model's preprocessing); the first
    ``calib_images`` calibrate the activation ranges. ``fmt``: ``openvino`` (NNCF) or ``onnx``
    (ONNX Runtime). ``input_size`` (H, W) is the export example size (default the model's).
    ``fp32_output``: also keep the fp32 ONNX export there. Nothing is left at ``output`` on failure.
    """
    from .export import export_onnx

    output = check_output(output, fmt)
    if calib_images is not None and calib_images < 1:
        raise ValueError(f"calib_images must be positive, got {calib_images}")
    arrays = calibration_batches(batches, calib_images)
    with tempfile.TemporaryDirectory(prefix="lolvit-int8-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", input_size)
        if fp32_output is not None:
            shutil.copyfile(fp32, fp32_output)
        quantize_file(fp32, output, arrays, fmt)
    return output


def load_runner(path: Union[str, Path], threads: int = 0):
    """A callable ``f(array (B, C, H, W)) -> logits array`` for an ``.onnx`` (ONNX Runtime) or
    ``.xml`` (OpenVINO CPU, fp32 inference precision for non-int8 ops) model."""
    path = Path(path)
    if path.suffix == ".xml":
        os.environ.setdefault("CI", "true")
        import openvino as ov

        cfg = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(str(path), "CPU", cfg)
        return lambda x: np.asarray(compiled(_as_array(x))[0])
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: sess.run(None, {INPUT_NAME: _as_array(x)})[0]
