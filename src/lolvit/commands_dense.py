"""Dense-prediction commands: ``detect``, ``ssd``, ``multitask``, ``data``. Parsing only."""
import argparse
import json


def register(sub: "argparse._SubParsersAction") -> None:
    _register_detect(sub)
    _register_ssd(sub)
    _register_multitask(sub)
    _register_data(sub)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --------------------------------------------------------------------------- detect (ultralytics)
def _register_detect(sub) -> None:
    p = sub.add_parser("detect", help="LOLViT-YOLO detection/segmentation through ultralytics, offline")
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = ds.add_parser("train", help="train a model (lolvit-s-det, lolvit-x-seg, yolov8n.yaml, ...)")
    t.add_argument("model")
    t.add_argument("data", help="YOLO data YAML")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--imgsz", type=int, default=640)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--project", default="runs/detect",
                   help="relative to the working directory: PROJECT/NAME/weights/best.pt")
    t.add_argument("--name", default="train")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--plots", action="store_true")
    t.set_defaults(func=_detect_train)
    v = ds.add_parser("val", help="validate a checkpoint or YAML on a data YAML (mAP)")
    v.add_argument("model")
    v.add_argument("data")
    v.add_argument("--imgsz", type=int, default=640)
    v.add_argument("--batch", type=int, default=16)
    v.add_argument("--project", default="runs/detect", help="relative to the working directory")
    v.add_argument("--name", default="val")
    v.set_defaults(func=_detect_val)
    pr = ds.add_parser("predict", help="draw predictions on images")
    pr.add_argument("model")
    pr.add_argument("source", help="image, folder or video")
    pr.add_argument("--imgsz", type=int, default=640)
    pr.add_argument("--conf", type=float, default=0.25)
    pr.add_argument("--save-dir", default="runs/predict")
    pr.set_defaults(func=_detect_predict)
    e = ds.add_parser("export", help="export with ultralytics' exporter (onnx, openvino, torchscript)")
    e.add_argument("model")
    e.add_argument("--format", default="onnx")
    e.add_argument("--imgsz", type=int, default=640)
    e.add_argument("--dynamic", action="store_true")
    e.set_defaults(func=_detect_export)


def _detect_train(a) -> int:
    from lolvit.integrations import ultralytics as lu

    yolo, _ = lu.train(a.model, a.data, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, workers=a.workers,
                       project=a.project, name=a.name, seed=a.seed, plots=a.plots)
    print(f"best checkpoint: {yolo.trainer.best}")
    return 0


def _detect_val(a) -> int:
    from lolvit.integrations import ultralytics as lu

    m = lu.val(a.model, a.data, imgsz=a.imgsz, batch=a.batch, project=a.project, name=a.name)
    _print(m.results_dict)
    return 0


def _detect_predict(a) -> int:
    from lolvit.integrations import ultralytics as lu

    results = lu.predict(a.model, a.source, imgsz=a.imgsz, conf=a.conf, save_dir=a.save_dir)
    for r in results:
        print(f"{r.path}: {len(r.boxes) if r.boxes is not None else 0} boxes")
    print(f"annotated images in {a.save_dir}")
    return 0


def _detect_export(a) -> int:
    from lolvit.integrations import ultralytics as lu

    print(lu.export(a.model, format=a.format, imgsz=a.imgsz, dynamic=a.dynamic))
    return 0


# --------------------------------------------------------------------------- SSD
def _register_ssd(sub) -> None:
    p = sub.add_parser("ssd", help="LOLViT + SSDLite detection head (torchvision), COCO mAP")
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action in ("train", "val"):
        q = ds.add_parser(action, help=f"{action} on a COCO-json, YOLO-txt or Pascal VOC dataset")
        q.add_argument("--images", required=action == "val", help=("folder of training images" if action == "train"
                       else "folder of validation images") + "; with --format voc the VOC root")
        q.add_argument("--labels", required=action == "val", help="COCO json file or folder of YOLO txt labels; "
                       "with --format voc the split name (ImageSets/Main/SPLIT.txt)")
        q.add_argument("--format", dest="fmt", default="auto", choices=("auto", "voc"),
                       help="auto: YOLO txt folder or COCO json; voc: Pascal VOC xml")
        q.add_argument("--difficult", default="skip", choices=("skip", "keep"),
                       help="VOC difficult objects: skip, or keep (trained on, ignored in mAP)")
        q.add_argument("--size", type=int, default=320)
        q.add_argument("--batch", type=int, default=16)
        q.add_argument("--threads", type=int, default=2)
        if action == "train":
            q.add_argument("--val-images")
            q.add_argument("--val-labels")
            q.add_argument("--variant", default="lolvit_s", choices=("lolvit_s", "lolvit_x"))
            q.add_argument("--num-classes", type=int, default=None,
                           help="object classes (no background); default: from the labels")
            q.add_argument("--class-names", nargs="+", default=None, metavar="NAME",
                           help="class names in label order (VOC default: the 20 VOC classes when the XML "
                                "names are all VOC's, else the sorted names found)")
            q.add_argument("--epochs", type=int, default=None, help="default 10; with --resume: the run's "
                           "(a larger value extends it)")
            q.add_argument("--lr", type=float, default=2e-3)
            q.add_argument("--out", default="runs/ssd", help="run folder: last.safetensors/.json, "
                           "state.safetensors, results.csv, tensorboard/, curves.png")
            q.add_argument("--seed", type=int, default=0)
            q.add_argument("--resume", action="store_true", help="continue the run in --out with its settings")
            q.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
        else:
            q.add_argument("--checkpoint", required=True)
        q.set_defaults(func=_ssd_train if action == "train" else _ssd_val)
    _register_predict_export(ds, "ssd", "runs/ssd/predict")


def _ssd_train(a) -> int:
    from lolvit.tasks.dense import ssd

    report = ssd.train_ssd(a.images, a.labels, a.num_classes, variant=a.variant, size=a.size, epochs=a.epochs,
                           batch=a.batch, lr=a.lr, out=a.out, val_images=a.val_images, val_labels=a.val_labels,
                           threads=a.threads, seed=a.seed, fmt=a.fmt, difficult=a.difficult,
                           class_names=a.class_names, resume=a.resume, tensorboard=a.tensorboard)
    _print(report)
    return 0


def _ssd_val(a) -> int:
    from lolvit.tasks.dense import ssd

    model = ssd.load_ssd(a.checkpoint)
    _print(ssd.evaluate_ssd(model, a.images, a.labels, batch=a.batch, threads=a.threads, fmt=a.fmt,
                            difficult=a.difficult))
    return 0


# --------------------------------------------------------------------------- multi-task
def _register_multitask(sub) -> None:
    p = sub.add_parser("multitask", help="drivable-area + lane-line segmentation (BDD100K layout)")
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action in ("train", "val"):
        q = ds.add_parser(action)
        q.add_argument("root", nargs="?" if action == "train" else None,
                       help="dataset root with images/, da_seg_annotations/, ll_seg_annotations/")
        q.add_argument("--size", nargs=2, type=int, default=(192, 320), metavar=("H", "W"))
        q.add_argument("--batch", type=int, default=8)
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--split", default="val" if action == "val" else "train")
        if action == "train":
            q.add_argument("--variant", default="lolvit_s", choices=("lolvit_s", "lolvit_x"))
            q.add_argument("--epochs", type=int, default=None, help="default 10; with --resume: the run's "
                           "(a larger value extends it)")
            q.add_argument("--lr", type=float, default=2e-3)
            q.add_argument("--out", default="runs/multitask", help="run folder: last.safetensors/.json, "
                           "state.safetensors, results.csv, tensorboard/, curves.png")
            q.add_argument("--seed", type=int, default=0)
            q.add_argument("--resume", action="store_true", help="continue the run in --out with its settings")
            q.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
            q.add_argument("--detect", action="store_true",
                           help="add the detection branch (YOLO boxes in det_annotations/SPLIT/*.txt)")
            q.add_argument("--nc", type=int, default=1, help="detection classes with --detect")
        else:
            q.add_argument("--checkpoint", required=True)
        q.set_defaults(func=_mt_train if action == "train" else _mt_val)
    _register_predict_export(ds, "multitask", "runs/multitask/predict")


def _mt_train(a) -> int:
    from lolvit.tasks.dense import multitask as mt

    _print(mt.train_multitask(a.root, variant=a.variant, size=tuple(a.size), epochs=a.epochs, batch=a.batch,
                              lr=a.lr, out=a.out, threads=a.threads, seed=a.seed, split=a.split,
                              nc=a.nc if a.detect else 0, resume=a.resume, tensorboard=a.tensorboard))
    return 0


def _mt_val(a) -> int:
    from lolvit.tasks.dense import multitask as mt

    model = mt.load_multitask(a.checkpoint)
    _print(mt.evaluate_multitask(model, a.root, split=a.split, size=tuple(a.size), batch=a.batch,
                                 threads=a.threads))
    return 0


# --------------------------------------------------------------------------- predict / export (SSD, multi-task)
def _register_predict_export(ds, task: str, predict_out: str) -> None:
    what = "boxes" if task == "ssd" else "drivable area, lane lines (and boxes)"
    pr = ds.add_parser("predict", help=f"draw {what} on an image or a folder of images")
    pr.add_argument("source", help="image file or folder")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--out", default=predict_out, help="folder for the annotated images")
    pr.add_argument("--conf", type=float, default=0.3 if task == "ssd" else 0.25, help="box score threshold")
    pr.add_argument("--threads", type=int, default=2)
    e = ds.add_parser("export", help="ONNX graph at the trained size (dynamic batch)")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", default=None, help="ONNX file (default: the checkpoint path with .onnx)")
    if task == "multitask":
        pr.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"), help="default: trained size")
        e.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"), help="default: trained size")
    pr.set_defaults(func=_dense_predict, task=task)
    e.set_defaults(func=_dense_export, task=task)


def _dense_predict(a) -> int:
    from lolvit.tasks.dense import infer

    if a.task == "ssd":
        results = infer.predict_ssd(a.checkpoint, a.source, a.out, conf=a.conf, threads=a.threads)
    else:
        results = infer.predict_multitask(a.checkpoint, a.source, a.out, size=a.size, conf=a.conf,
                                          threads=a.threads)
    _print({"out": a.out, "images": results})
    return 0


def _dense_export(a) -> int:
    from pathlib import Path

    from lolvit.tasks.dense import infer
    from lolvit.tasks.dense.checkpoint import checkpoint_files

    out = a.out or str(checkpoint_files(a.checkpoint)[0].with_suffix(".onnx"))
    if a.task == "ssd":
        path = infer.export_ssd(a.checkpoint, out)
    else:
        path = infer.export_multitask(a.checkpoint, out, size=a.size)
    print(Path(path))
    return 0


# --------------------------------------------------------------------------- data generators
def _register_data(sub) -> None:
    p = sub.add_parser("data", help="generate offline demo/test datasets")
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = ds.add_parser("make-scenes", help="Fashion-MNIST detection/instance-segmentation scenes")
    s.add_argument("out")
    s.add_argument("--train", type=int, default=200)
    s.add_argument("--val", type=int, default=50)
    s.add_argument("--imgsz", type=int, default=320)
    s.add_argument("--max-objects", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fashion-root", default=None)
    # harder scenes (issue 9): object count and size, background clutter, occlusion
    s.add_argument("--min-objects", type=int, default=1)
    s.add_argument("--min-scale", type=float, default=0.12, help="smallest object side / image side")
    s.add_argument("--max-scale", type=float, default=0.45, help="largest object side / image side")
    s.add_argument("--clutter", type=float, default=1.0, help="background shapes, x 6-15")
    s.add_argument("--max-overlap", type=float, default=0.3,
                   help="how much of a smaller object's box another may cover")
    s.add_argument("--occluders", type=int, default=0, help="shapes drawn over each scene (amodal labels)")
    s.set_defaults(func=_make_scenes)
    r = ds.add_parser("make-roads", help="road scenes with drivable/lane masks (BDD100K layout)")
    r.add_argument("out")
    r.add_argument("--train", type=int, default=200)
    r.add_argument("--val", type=int, default=50)
    r.add_argument("--width", type=int, default=320)
    r.add_argument("--height", type=int, default=192)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=_make_roads)


def _make_scenes(a) -> int:
    from lolvit.tasks.dense.generate import make_scenes

    _print(make_scenes(a.out, a.train, a.val, a.imgsz, a.max_objects, a.min_scale, a.max_scale, seed=a.seed,
                       fashion_root=a.fashion_root, min_objects=a.min_objects, clutter=a.clutter,
                       max_overlap=a.max_overlap, occluders=a.occluders))
    return 0


def _make_roads(a) -> int:
    from lolvit.tasks.dense.generate import make_roads

    _print(make_roads(a.out, a.train, a.val, a.width, a.height, seed=a.seed))
    return 0
