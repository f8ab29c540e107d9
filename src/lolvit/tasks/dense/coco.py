"""COCO-style box mAP with pycocotools, shared by the SSD and multi-task evaluations."""
from typing import Any, Dict, List

__all__ = ["coco_bbox_stats"]


def coco_bbox_stats(gt: Dict[str, Any], dets: List[Dict[str, Any]]) -> Dict[str, float]:
    """pycocotools bbox evaluation of ``dets`` against the COCO dict ``gt``: mAP50-95, mAP50, mAP75
    (0.0 without detections; nan, undefined, when ``gt`` has no annotations)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    if not gt["annotations"]:
        stats = [float("nan")] * 12
    elif not dets:
        stats = [0.0] * 12
    else:
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = [max(float(v), 0.0) for v in ev.stats]
    return {"map50_95": stats[0], "map50": stats[1], "map75": stats[2]}
