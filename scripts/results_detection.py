"""Reduced CPU schedule for docs/results/detection.md (issue 5): LOLViT-S/X-YOLO vs yolov8n / yolo11n
from scratch on generated Fashion-MNIST scenes, same epochs / image size; then mAP50-95 and fused
CPU latency measured side by side (interleaved rounds, medians). Writes JSON to --out.

    python scripts/results_detection.py --root runs/results5 --epochs 20 --imgsz 160 --threads 1
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", default="runs/results5")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=["lolvit-s-det", "lolvit-x-det", "yolov8n.yaml", "yolo11n.yaml"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(a.root).resolve()
    from lolvit.integrations import ultralytics as lu
    from lolvit.tasks.dense.generate import make_scenes

    lu.configure_offline(root / "yolo-config")
    data = root / "scenes" / "scenes-det.yaml"
    if not data.exists():
        print("scenes:", make_scenes(root / "scenes", a.train, a.val, a.imgsz, seed=0), flush=True)
    out = Path(a.out or root / "detection.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    results["config"] = vars(a)
    for name in a.models:
        if name in results and "map50_95" in results[name]:
            continue
        t0 = time.time()
        yolo, _ = lu.train(name, data, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, workers=0,
                           project=str(root / "runs"), name=Path(name).stem, exist_ok=True, seed=0,
                           deterministic=True, plots=False)
        train_s = time.time() - t0
        m = lu.val(yolo.trainer.best, data, imgsz=a.imgsz, batch=a.batch, project=str(root / "runs"),
                   name=Path(name).stem + "-val", exist_ok=True)
        results[name] = dict(best=str(yolo.trainer.best), train_s=round(train_s, 1),
                             map50_95=float(m.box.map), map50=float(m.box.map50),
                             params=sum(q.numel() for q in yolo.model.parameters()))
        out.write_text(json.dumps(results, indent=2))
        print(name, results[name], flush=True)
    # fused CPU latency, batch 1, interleaved rounds
    models = {}
    for name in a.models:
        model = lu.load_yolo(results[name]["best"]).model.float().eval()
        model.fuse(verbose=False)
        models[name] = model
    x = torch.rand(1, 3, a.imgsz, a.imgsz)
    times = {n: [] for n in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(5):
                m(x)
        for _ in range(a.rounds):
            for n, m in models.items():
                t = time.perf_counter()
                for _ in range(20):
                    m(x)
                times[n].append((time.perf_counter() - t) / 20)
    for n in models:
        med = statistics.median(times[n])
        results[n]["latency_ms"] = round(med * 1e3, 2)
        results[n]["fps"] = round(1.0 / med, 1)
    results["latency_threads"] = a.threads
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
