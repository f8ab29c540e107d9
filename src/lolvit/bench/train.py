"""``lolvit bench train``: CPU training throughput (images/s of one full step: forward, loss,
backward, optimizer) of LOLViT against the timm models users would pick instead, at 32 px
batch 128 (Fashion-MNIST-sized) and 224 px batch 32."""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tasks.summary import count_params
from .report import header, machine_info, markdown_table, write_report
from .timing import median, time_interleaved, warm_thread_pool

MODELS = ("lolvit_s", "lolvit_x", "mobilevit_xxs", "mobilevit_xs", "mobilevitv2_050", "ghostnet_100",
          "mobilenetv3_small_100", "efficientvit_m0")
# reference per LOLViT model: the peer whose training speed the issue asks LOLViT to match
PEERS = {"lolvit_s": "mobilevit_xxs", "lolvit_x": "mobilevit_xs"}
FULL = dict(models=MODELS, settings=((32, 128), (224, 32)), channels_last=False, warmup=2, repeats=5,
            budget_s=90.0, num_classes=10)
QUICK = dict(models=("lolvit_s", "mobilevit_xxs"), settings=((32, 16),), channels_last=False, warmup=1,
             repeats=3, budget_s=5.0, num_classes=10)


def build_train_model(name: str, num_classes: int, channels_last: bool) -> nn.Module:
    import timm

    from .. import models as _  # noqa: F401  (registers lolvit_s/x with timm)

    model = timm.create_model(name, pretrained=False, num_classes=num_classes).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    """One SGD step (momentum, weight decay) with cross-entropy, as the classify trainer runs."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def run(
    models: Sequence[str] = FULL["models"],
    settings: Sequence[Tuple[int, int]] = FULL["settings"],
    channels_last: bool = False,
    threads: int = 2,
    warmup: int = FULL["warmup"],
    repeats: int = FULL["repeats"],
    budget_s: Optional[float] = FULL["budget_s"],
    num_classes: int = 10,
    seed: int = 0,
) -> Dict[str, Any]:
    """Per (size, batch) setting, one training step of every model per round, interleaved.
    Rows: ``median_ms``/``min_ms`` per step, ``img_s`` (batch / median), ``vs_peer`` =
    img/s over img/s of the peer in :data:`PEERS` (medians; ``vs_peer_min`` from the fastest steps)."""
    import timm

    unknown = [m for m in models if not timm.is_model(m) and m not in ("lolvit_s", "lolvit_x")]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; use timm or LOLViT model names such as {list(MODELS)}")
    for size, batch in settings:
        if size < 32 or batch < 2:
            raise ValueError(f"settings need size >= 32 and batch >= 2 (BN in training), got {(size, batch)}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    machine = machine_info(threads)
    warm_thread_pool()
    rows: List[Dict[str, Any]] = []
    skipped: Dict[str, str] = {}
    for size, batch in settings:
        fns: Dict[str, Callable[[], Any]] = {}
        params: Dict[str, int] = {}
        x = torch.randn(batch, 3, size, size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,))
        for name in models:
            model = build_train_model(name, num_classes, channels_last)
            fn = _step_fn(model, x, y)
            try:
                fn()  # also the first warm-up step
            except (RuntimeError, ValueError, AssertionError) as e:
                skipped[f"{name}@{size}"] = str(e).splitlines()[0][:200]
                continue
            fns[name], params[name] = fn, count_params(model)
        samples = time_interleaved(fns, max(warmup - 1, 0), repeats, budget_s, min_sample_s=0.0)
        group = {}
        for name, s in samples.items():
            med = median(s)
            group[name] = dict(model=name, size=size, batch=batch, channels_last=channels_last, samples_ms=s,
                               median_ms=med, min_ms=min(s), img_s=1e3 * batch / med,
                               img_s_max=1e3 * batch / min(s), params=params[name])
        for name, r in group.items():
            peer = group.get(PEERS.get(name, ""))
            r["peer"] = PEERS.get(name)
            r["vs_peer"] = r["img_s"] / peer["img_s"] if peer else None
            r["vs_peer_min"] = r["img_s_max"] / peer["img_s_max"] if peer else None
            rows.append(r)
    machine["load_avg_end"] = machine_info(threads)["load_avg"]
    return dict(bench="train", warmup=warmup, repeats=repeats, budget_s=budget_s, channels_last=channels_last,
                skipped=skipped, machine=machine, rows=rows)


COLUMNS = [
    ("model", "model", ""), ("size", "size", ""), ("batch", "batch", ""), ("median ms/step", "median_ms", ".1f"),
    ("min ms/step", "min_ms", ".1f"), ("img/s", "img_s", ".1f"), ("peer", "peer", ""),
    ("img/s vs peer", "vs_peer", ".2f"), ("vs peer (min)", "vs_peer_min", ".2f"), ("params M", "params_m", ".3f"),
]


def report(payload: Dict[str, Any], out_dir: str, command: str = "lolvit bench train") -> Dict[str, Any]:
    rows = payload["rows"]
    for r in rows:
        r["params_m"] = r["params"] / 1e6
    md = header("Training throughput (CPU)", payload["machine"], command)
    md += ("\nOne full training step per sample (zero_grad, forward, cross-entropy, backward, SGD with "
           "momentum), fp32, `pretrained=False`, 10 classes, random inputs"
           + (", model and input channels-last" if payload.get("channels_last") else "")
           + ". Steps of all models interleaved round-robin; 'img/s vs peer' = LOLViT img/s / the peer's "
           "(medians; '(min)' from the fastest steps).\n\n")
    md += markdown_table(rows, COLUMNS)
    if payload.get("skipped"):
        md += "\n\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in payload["skipped"].items()) + "\n"

    def plot(fig):
        groups = sorted({(r["size"], r["batch"]) for r in rows})
        for i, (size, batch) in enumerate(groups):
            ax = fig.add_subplot(1, len(groups), i + 1)
            sel = sorted((r for r in rows if (r["size"], r["batch"]) == (size, batch)), key=lambda r: r["img_s"])
            ax.barh([r["model"] for r in sel], [r["img_s"] for r in sel],
                    color=["C1" if r["model"].startswith("lolvit") else "C0" for r in sel])
            ax.set_title(f"train step, {size}px batch {batch}", fontsize=8)
            ax.set_xlabel("images/s", fontsize=7)
            ax.tick_params(labelsize=6)

    paths = write_report(out_dir, "train", payload, md, plot)
    return dict(paths=paths, markdown=md)
