"""Static int8 quantization: round trip on digits against the float model, attention kept fp32, bad inputs."""
import numpy as np
import pytest
import torch

import lolvit
from lolvit.io import build_model
from lolvit.quantize import calibration_batches, check_output, float_matmuls, load_runner, quantize_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 32  # below export's 64 px dynamic minimum: a fixed-size graph, fast to export


def _digits(split, n):
    from lolvit.tasks.classify.data import build_dataset
    from lolvit.tasks.predict import eval_transform

    cfg = {"input_size": (3, SIZE, SIZE), "mean": (0.5,) * 3, "std": (0.25,) * 3, "interpolation": "bilinear",
           "crop_pct": 1.0}
    ds = build_dataset("digits", split, eval_transform(cfg), SIZE)
    return torch.stack([ds[i][0] for i in range(n)])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return lolvit.fuse(build_model("lolvit_s", {"num_classes": 10}, "test").eval())


@pytest.fixture(scope="module")
def images():
    return _digits("train", 64), _digits("val", 64)


def _cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _check_close(model, path, val):
    with torch.no_grad():
        ref = model(val).numpy()
    out = load_runner(path, threads=1)(val)
    assert out.shape == ref.shape
    # int8 logits follow the float model's: cosine >= 0.99 per image, same top-1 on >= 90 %
    assert _cosine(out, ref).min() >= 0.99
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9


@pytest.mark.slow
def test_onnx_round_trip_keeps_attention_float(model, images, tmp_path):
    import onnx

    calib, val = images
    fp32 = tmp_path / "fp32.onnx"
    path = quantize_model(model, calib.split(16), tmp_path / "int8.onnx", "onnx", (SIZE, SIZE), 64, fp32_output=fp32)
    assert path.is_file() and fp32.is_file()
    q = onnx.load(str(path))
    ops = {n.op_type for n in q.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # the FWA products Q K^T and weights x V: present, fp32 MatMuls fed by no DequantizeLinear
    excluded = float_matmuls(onnx.load(str(fp32)))
    assert len(excluded) >= 4
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    by_name = {n.name: n for n in q.graph.node}
    for name in excluded:
        assert by_name[name].op_type == "MatMul"
        assert all(producers.get(i) != "DequantizeLinear" for i in by_name[name].input), name
    layer_norms = [n for n in q.graph.node if n.op_type == "LayerNormalization"]
    assert layer_norms and all(producers.get(i) != "DequantizeLinear" for n in layer_norms for i in n.input)
    _check_close(model, path, val)


@pytest.mark.slow
def test_openvino_round_trip(model, images, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    calib, val = images
    fp32 = tmp_path / "fp32.onnx"
    path = quantize_model(model, calib.split(16), tmp_path / "int8.xml", "openvino", (SIZE, SIZE), 64, fp32_output=fp32)
    assert path.is_file() and path.with_suffix(".bin").is_file()
    import openvino as ov

    from lolvit.quantize import _ov_float_matmuls

    ops = ov.Core().read_model(str(path)).get_ops()
    assert "FakeQuantize" in {op.get_type_name() for op in ops}
    # the FWA products (MatMuls with no constant input) are fed by no FakeQuantize
    names = set(_ov_float_matmuls(ov.convert_model(str(fp32))))
    products = [op for op in ops if op.get_friendly_name() in names]
    assert len(products) >= 4
    for op in products:
        assert all(op.input_value(i).get_node().get_type_name() != "FakeQuantize" for i in range(2))
    _check_close(model, path, val)


def test_bad_inputs(model, tmp_path):
    with pytest.raises(ValueError, match="format"):
        check_output(tmp_path / "m.onnx", "tflite")
    with pytest.raises(ValueError, match=r"\.xml"):
        check_output(tmp_path / "m.onnx", "openvino")
    with pytest.raises(ValueError, match=r"\.onnx"):
        check_output(tmp_path / "m.xml", "onnx")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(ValueError, match="directory"):
        check_output(tmp_path / "d.onnx", "onnx")
    with pytest.raises(ValueError, match="no calibration images"):
        calibration_batches([])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        calibration_batches([np.zeros((3, 8, 8))])
    assert [len(b) for b in calibration_batches([np.zeros((4, 3, 8, 8))] * 3, limit=6)] == [4, 2]
    out = tmp_path / "never.onnx"
    with pytest.raises(ValueError, match="calib_images"):
        quantize_model(model, [np.zeros((1, 3, SIZE, SIZE))], out, "onnx", calib_images=0)
    assert not out.exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from lolvit.cli import main

    code = main(["quantize", "--model", "lolvit_s", "--data", "digits", "--output", str(tmp_path / "m.txt"),
                 "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and ".onnx" in err
    code = main(["quantize", "--model", "lolvit_s", "--data", str(tmp_path / "missing"), "--output",
                 str(tmp_path / "m.onnx"), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_cli_quantize_and_eval(tmp_path, capsys):
    from lolvit.cli import main

    out = tmp_path / "int8.onnx"
    code = main(["quantize", "--model", "lolvit_s", "--data", "digits", "--size", str(SIZE), str(SIZE), "--format",
                 "onnx", "--calib-images", "16", "--output", str(out), "--eval", "--eval-images", "40",
                 "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "calibrated on 16 digits train images" in text
    assert "top-1 on 40 digits val images: fp32" in text and "int8" in text
