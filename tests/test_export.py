import json

import numpy as np
import pytest
import timm
import torch

import lolvit
from lolvit.export import export_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lolvit_s", "lolvit_x"])
def test_onnx_dynamic_matches_eager(tmp_path, name):
    model = timm.create_model(name, num_classes=10)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 96, 96))
    model = lolvit.fuse(model)
    path = export_onnx(model, tmp_path / f"{name}.onnx", (224, 224))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 224, 224), (3, 3, 97, 131), (1, 3, 640, 384)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"images": x.numpy()})[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def _dims(proto):
    return [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]


@pytest.mark.slow
def test_export_of_a_32px_checkpoint_with_metadata(tmp_path, capsys):
    """Below 64 px the graph is exported for that size (batch still dynamic); class names and the
    checkpoint's preprocessing travel as metadata_props."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from lolvit.cli import main
    from lolvit.io import save_checkpoint

    model = timm.create_model("lolvit_s", num_classes=3, depths=1).eval()
    dc = {"input_size": [3, 32, 32], "crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.3] * 3, "std": [0.4] * 3}
    save_checkpoint(model, tmp_path / "ck", class_names=["a", "b", "c"], data_config=dc)
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--output", str(tmp_path / "m.onnx")]) == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert _dims(proto) == ["batch", 3, 32, 32]
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == ["a", "b", "c"] and props["model"] == "lolvit_s"
    meta_dc = json.loads(props["data_config"])
    assert meta_dc["input_size"] == [3, 32, 32] and meta_dc["mean"] == [0.3] * 3 and meta_dc["crop_pct"] == 1.0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    fused = lolvit.fuse(model)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], fused(x).numpy(),
                                       rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_dynamic_axes_are_named(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    model = lolvit.fuse(timm.create_model("lolvit_s", num_classes=2, depths=1))
    export_onnx(model, tmp_path / "d.onnx", (64, 64))
    proto = onnx.load(str(tmp_path / "d.onnx"))
    assert _dims(proto) == ["batch", 3, "height", "width"]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["batch", 2]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["data_config"])["input_size"] == [3, 64, 64]
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 96, 160), (1, 3, 64, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], model(x).numpy(),
                                       rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_openvino_ir_matches_eager_at_three_sizes(tmp_path):
    ov = pytest.importorskip("openvino")
    from lolvit.export import export_openvino

    model = timm.create_model("lolvit_s", num_classes=10)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        model(torch.randn(4, 3, 96, 96))
    model = lolvit.fuse(model)
    path = export_openvino(model, tmp_path / "lolvit_s.xml", (224, 224))
    assert path.with_suffix(".bin").exists()
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for shape in [(1, 3, 224, 224), (2, 3, 97, 131), (1, 3, 320, 192)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        out = compiled(x.numpy())[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_openvino_export_refuses_a_non_xml_path(tmp_path, capsys):
    pytest.importorskip("openvino")
    from lolvit.cli import main

    assert main(["export", "--model", "lolvit_s", "--format", "openvino", "--output", str(tmp_path / "m.onnx")]) != 0
    assert ".xml" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
