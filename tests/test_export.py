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
