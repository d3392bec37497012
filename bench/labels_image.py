"""RLG vs Yin et al. on image classifiers: the RLG paper's Tables 1, 3 and 4 on our setup.

Setup (stated, not hidden):
- Models: torchvision ResNet-50 (ReLU) and EfficientNet-B0 (SiLU), `weights=None` (random
  init), 1000 classes, inputs 64x64 (to keep CPU time sane), train mode (BatchNorm uses batch
  statistics), plain SGD with lr 0.1 on mean cross-entropy.
- Images: the 20 real ImageNet samples shipped with foolbox 3.3.4 (`pip install -e '.[bench]'`),
  each batch drawn with replacement and augmented (random resized crop to 64x64, flip, small
  colour jitter). Their real labels span only 20 classes, so the labels of
  each batch are drawn uniformly from the 1000 classes (with repeats possible), independently of
  the images.
- Table 1: one step, N = 10, 50, 100: RLG (S estimated from the spectrum, no oracle) vs Yin's
  threshold rule, on the last layer's update.
- Table 3: K local steps of N samples, the whole model trained between steps (EfficientNet-B0):
  (N, K) = (4,1), (8,1), (1,4), (1,8), (2,2).
- Table 4: EfficientNet-B0, N = 10, the update passed through Sign-SGD (lr * sign) or GradDrop
  (zero the 50 % / 90 % smallest-|x| entries per tensor) from `defenses/` before the attack.
- A `not_applicable` RLG result counts as an empty prediction (precision, recall, F1 and exact
  match 0); its rate is shown as "n/a".

Usage: `python bench/labels_image.py [--quick] [--batches 100] [--tables 1,3,4]`.
Writes `bench/results/labels_image[_quick].json` and prints the tables with the paper's numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from attacks.baselines import yin_labels
from attacks.metrics import label_set_scores
from attacks.rlg import reveal_labels
from defenses.graddrop import GradDrop
from defenses.signsgd import SignSGD

RESULTS = Path(__file__).resolve().parent / "results"
RES = 64
LR = 0.1
PAPER_T1 = {  # RLG F1 / Yin precision, from the RLG paper (Dang et al. 2021), Table 1
    ("resnet50", 10): {"rlg_f1": 0.998},
    ("resnet50", 50): {"rlg_f1": 0.987},
    ("resnet50", 100): {"rlg_f1": 0.972},
    ("efficientnet_b0", 10): {"rlg_f1": 1.0, "yin_precision": 0.010},
    ("efficientnet_b0", 50): {"rlg_f1": 0.999, "yin_precision": 0.049},
    ("efficientnet_b0", 100): {"rlg_f1": 0.999, "yin_precision": 0.095},
}
PAPER_T3 = {(4, 1): 1.0, (8, 1): 1.0, (1, 4): 0.535, (1, 8): 0.160, (2, 2): 0.330}  # ASR, EM
PAPER_T4 = {"none": 1.0, "signsgd": 0.0, "graddrop50": 0.17, "graddrop90": 0.0}  # EM


def load_images() -> torch.Tensor:
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        raise SystemExit("needs the real ImageNet samples of foolbox: pip install -e '.[bench]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("imagenet_*.jpg"))
    arrays = [
        np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.BILINEAR), np.float32)
        / 255
        for p in files
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (20, 3, 256, 256)


def make_batch(images: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n augmented 64x64 crops of randomly chosen real images, ImageNet-normalised."""
    out = []
    for i in torch.randint(0, len(images), (n,), generator=gen).tolist():
        size = int(torch.randint(96, 257, (1,), generator=gen))
        top, left = (int(torch.randint(0, 257 - size, (1,), generator=gen)) for _ in range(2))
        crop = images[i : i + 1, :, top : top + size, left : left + size]
        crop = F.interpolate(crop, size=(RES, RES), mode="bilinear", antialias=True)
        if torch.rand(1, generator=gen) < 0.5:
            crop = crop.flip(-1)
        crop = crop * (0.8 + 0.4 * torch.rand(1, 3, 1, 1, generator=gen))
        out.append(crop)
    x = torch.cat(out).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


def build(name: str) -> tuple[torch.nn.Module, torch.nn.Linear]:
    import torchvision

    if name == "resnet50":
        model = torchvision.models.resnet50(weights=None, num_classes=1000)
        return model, model.fc
    model = torchvision.models.efficientnet_b0(weights=None, num_classes=1000)
    return model, model.classifier[-1]


def local_update(model, head, batches, labels, lr=LR, whole_model=True):
    """K SGD steps; returns the head's (weight, bias) update `after - before` (float32)."""
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters()] if whole_model else [head.weight, head.bias]
    model.train()
    for x, y in zip(batches, labels, strict=True):
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(lr * g)
    dw, db = head.weight.detach() - w0, head.bias.detach() - b0
    model.load_state_dict(state)  # the global model stays fixed across batches
    return dw.clone(), db.clone()


def score_pair(dw, db, truth, lr=LR) -> dict:
    rlg = reveal_labels(dw, bias_update=db)
    rlg_labels = rlg.labels if rlg.ok else ()
    yin = yin_labels(-dw / lr)
    out = {f"rlg_{k}": v for k, v in label_set_scores(rlg_labels, truth).items()}
    out.update({f"yin_{k}": v for k, v in label_set_scores(yin.labels, truth).items()})
    out["rlg_not_applicable"] = float(not rlg.ok)
    out["rlg_seconds"] = float(rlg.diagnostics.get("seconds", np.nan))
    return out


def mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def table1(images, batches, gen, models=("resnet50", "efficientnet_b0"), sizes=(10, 50, 100)):
    cells = []
    for name in models:
        torch.manual_seed(0)
        model, head = build(name)
        for n in sizes:
            rows, t = [], time.perf_counter()
            for _ in range(batches):
                x = make_batch(images, n, gen)
                y = torch.randint(0, 1000, (n,), generator=gen)
                dw, db = local_update(model, head, [x], [y], whole_model=False)
                rows.append(score_pair(dw, db, sorted(set(y.tolist()))))
            cell = {"model": name, "N": n, "batches": batches, **mean_rows(rows)}
            cell["seconds"] = time.perf_counter() - t
            cell["paper"] = PAPER_T1.get((name, n), {})
            cells.append(cell)
            print_row("T1", f"{name} N={n}", cell)
    return cells


def table3(images, batches, gen, grid=((4, 1), (8, 1), (1, 4), (1, 8), (2, 2))):
    torch.manual_seed(0)
    model, head = build("efficientnet_b0")
    cells = []
    for n, k in grid:
        rows, t = [], time.perf_counter()
        for _ in range(batches):
            xs = [make_batch(images, n, gen) for _ in range(k)]
            ys = [torch.randint(0, 1000, (n,), generator=gen) for _ in range(k)]
            dw, db = local_update(model, head, xs, ys, whole_model=True)
            rows.append(score_pair(dw, db, sorted(set(torch.cat(ys).tolist()))))
        cell = {"model": "efficientnet_b0", "N": n, "K": k, "batches": batches, **mean_rows(rows)}
        cell["seconds"] = time.perf_counter() - t
        cell["paper_asr_em"] = PAPER_T3[(n, k)]
        cells.append(cell)
        print_row("T3", f"N={n} K={k}", cell)
    return cells


def table4(images, batches, gen, n=10):
    torch.manual_seed(0)
    model, head = build("efficientnet_b0")
    defenses = {
        "none": None,
        "signsgd": SignSGD(),
        "graddrop50": GradDrop(rate=0.5),
        "graddrop90": GradDrop(rate=0.9),
    }
    rows = {k: [] for k in defenses}
    t = time.perf_counter()
    for _ in range(batches):
        x = make_batch(images, n, gen)
        y = torch.randint(0, 1000, (n,), generator=gen)
        dw, db = local_update(model, head, [x], [y], whole_model=False)
        truth = sorted(set(y.tolist()))
        for name, defense in defenses.items():
            up = {"w": dw, "b": db}
            if defense is not None:
                up = defense(up, {"lr": LR})
            rows[name].append(score_pair(up["w"], up["b"], truth))
    cells = []
    for name in defenses:
        cell = {"model": "efficientnet_b0", "N": n, "defense": name, "batches": batches}
        cell.update(mean_rows(rows[name]))
        cell["seconds"] = time.perf_counter() - t
        cell["paper_em"] = PAPER_T4[name]
        cells.append(cell)
        print_row("T4", name, cell)
    return cells


def print_row(table: str, label: str, c: dict) -> None:
    print(
        f"{table} {label:<26} RLG P {c['rlg_precision']:.3f} R {c['rlg_recall']:.3f} "
        f"F1 {c['rlg_f1']:.3f} EM {c['rlg_exact']:.2f} (n/a {c['rlg_not_applicable']:.2f}) | "
        f"Yin P {c['yin_precision']:.3f} R {c['yin_recall']:.3f} F1 {c['yin_f1']:.3f} "
        f"EM {c['yin_exact']:.2f} | {c['seconds']:.0f}s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 batches per cell, N <= 50")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--tables", default="1,3,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = 3 if args.quick else args.batches
    gen = torch.Generator().manual_seed(args.seed)
    images = load_images()
    tables = {t.strip() for t in args.tables.split(",")}
    start, load = time.perf_counter(), os.getloadavg()
    out = {"bench": "labels_image", "quick": args.quick, "batches": batches, "resolution": RES}
    if "1" in tables:
        sizes = (10, 50) if args.quick else (10, 50, 100)
        out["table1"] = table1(images, batches, gen, sizes=sizes)
    if "3" in tables:
        out["table3"] = table3(images, batches, gen)
    if "4" in tables:
        out["table4"] = table4(images, batches, gen)
    out["seconds"] = time.perf_counter() - start
    out["load_average_before"], out["load_average_after"] = load, os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("labels_image_quick.json" if args.quick else "labels_image.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"total {out['seconds']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
