"""LOLViT-YOLO detectors at the paper's budget (Tables 5/7, issue 9): FLOPs at 640 px, parameters,
one training step, ultralytics' fuse() and ONNX export; and the code path of ``lolvit bench detect``."""
import copy
import importlib.util
import json

import pytest
import torch

pytest.importorskip("ultralytics")

from lolvit.bench.detect import build_detector, export_onnx  # noqa: E402
from lolvit.bench.runner import run_bench  # noqa: E402
from lolvit.tasks.summary import count_flops, count_params  # noqa: E402

# name -> (GFLOPs at 640 px with 80 classes, paper parameters with 20 classes or None)
BUDGET = {
    "lolvit-s-det": (7.5, 1.6e6),  # Table 5: 7.2 GFLOPs; Table 7: 1.6M
    "lolvit-x-det": (14.5, 3.6e6),  # Table 5: 14.5 GFLOPs; Table 7: 3.6M
    "lolvit-s-seg": (9.0, None),  # below yolo11n-seg (9.8 by the same count)
    "lolvit-x-seg": (16.0, None),
}
IMGSZ = 64


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_flops_and_params_at_paper_budget(name):
    gflops_budget, paper_params = BUDGET[name]
    model = build_detector(name)
    total, per_module = count_flops(model, (640, 640))
    gflops = total / 1e9
    assert gflops <= gflops_budget, f"{name}: {gflops:.2f} GFLOPs at 640 px > {gflops_budget}"
    root = type(model).__name__
    head = per_module[f"{root}.model.{len(model.model) - 1}"]
    assert 0 < per_module[f"{root}.model.0"] < total and head > 0  # backbone, neck and head all counted
    if paper_params is not None:
        params = count_params(build_detector(name, nc=20))
        assert abs(params - paper_params) <= 0.05 * paper_params, f"{name}: {params} parameters (20 classes)"


def _batch(segment: bool, n_img: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.3, 0.3, 0.3, 0.4], [0.7, 0.6, 0.4, 0.3], [0.5, 0.5, 0.5, 0.5]])
    batch = dict(img=torch.rand(n_img, 3, IMGSZ, IMGSZ, generator=g), batch_idx=torch.tensor([0.0, 0.0, 1.0]),
                 cls=torch.tensor([[0.0], [2.0], [1.0]]), bboxes=boxes)
    if segment:  # overlap format: one map per image, pixel value = instance number (1-based)
        masks = torch.zeros(n_img, IMGSZ // 4, IMGSZ // 4)
        s = IMGSZ // 4
        for k, (b, (cx, cy, w, h)) in enumerate(zip((0, 0, 1), boxes.tolist())):
            x0, x1, y0, y1 = int((cx - w / 2) * s), int((cx + w / 2) * s), int((cy - h / 2) * s), int((cy + h / 2) * s)
            masks[b, y0:y1, x0:x1] = 1 + (k if b == 0 else 0)
        batch["masks"] = masks
    return batch


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_train_step_fuse_and_onnx(name, tmp_path):
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    model = build_detector(name, nc=3)
    model.args = get_cfg()  # the loss reads its box/cls/dfl gains here, as ultralytics' trainer sets them
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss, _ = model.loss(_batch(name.endswith("-seg")))
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("model.0.") for k in changed) and any(".cv3." in k for k in changed)

    model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        y = model(x)[0]
        fused = copy.deepcopy(model).fuse(verbose=False)
        assert fused.is_fused()
        y_fused = fused(x)[0]
    torch.testing.assert_close(y_fused, y, rtol=1e-3, atol=1e-3)

    path = export_onnx(model, str(tmp_path), name, IMGSZ)
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    expected = [y] if torch.is_tensor(y) else list(y)  # segment: predictions and mask prototypes
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-3, atol=1e-3)


def test_bench_detect_code_path(tmp_path):
    result = run_bench("detect", quick=True, threads=1, out=str(tmp_path),
                       models=("lolvit-s-det", "lolvit-s-det:backbone", "yolov8n"), backends=("eager", "onnxruntime"),
                       sizes=(64,),
                       warmup=0, repeats=1, budget_s=0.0)
    rows = result["payload"]["rows"]
    got = {(r["model"], r["backend"]) for r in rows}
    assert {("lolvit-s-det", "eager"), ("lolvit-s-det:backbone", "eager"), ("yolov8n", "eager")} <= got
    if importlib.util.find_spec("onnxruntime"):
        assert ("lolvit-s-det", "onnxruntime") in got and ("lolvit-s-det:backbone", "onnxruntime") in got
    params = {r["model"]: r["params"] for r in rows}
    assert params["lolvit-s-det:backbone"] < params["lolvit-s-det"]
    ref = next(r for r in rows if r["model"] == "yolov8n" and r["backend"] == "eager")
    assert ref["vs_ref"] == 1.0 and ref["gflops"] > 0
    saved = json.loads((tmp_path / "detect.json").read_text())
    assert saved["bench"] == "detect" and len(saved["rows"]) == len(rows)
    assert (tmp_path / "detect.png").stat().st_size > 0 and "| lolvit-s-det |" in (tmp_path / "detect.md").read_text()
    with pytest.raises(ValueError, match="backend"):
        run_bench("detect", quick=True, out=str(tmp_path / "bad"), backends=("tensorrt",))
    with pytest.raises(ValueError, match="backbone"):
        run_bench("detect", quick=True, out=str(tmp_path / "bad"), models=("yolov8n:backbone",))
    with pytest.raises(ValueError, match="multiples of 32"):
        run_bench("detect", quick=True, out=str(tmp_path / "bad"), sizes=(50,))
