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
