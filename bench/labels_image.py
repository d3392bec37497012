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
- Table 1: one step, N = 10, 50, 100, 200: RLG (S estimated from the spectrum, no oracle) vs
  Yin's threshold rule, on the last layer's update. Only the head takes the step, so each batch
  is its head features (the backbone's output in train mode) and labels; batch i of a cell has
  its own generator (seed, model, N, i) and its features are cached under `--cache` (default
  `.cache/labels_image/`, git-ignored, about 0.8 MB per 100 samples), so reruns (e.g. of the
  rank rule) skip the slow backbone.
- Table 3: K local steps of N samples, the whole model trained between steps (EfficientNet-B0):
  (N, K) = (4,1), (8,1), (1,4), (1,8), (2,2).
- Table 4: EfficientNet-B0, N = 10, the update passed through Sign-SGD (lr * sign) or GradDrop
  (zero the 50 % / 90 % smallest-|x| entries per tensor) from `defenses/` before the attack.
- Tables 3 and 4 also score RLG as the fedsim plugin runs it (`max_labels` = min(N * K, d / 2):
  an estimate above it is not applicable, or falls back to the last steep gap below it).
- A `not_applicable` RLG result counts as an empty prediction (precision, recall, F1 and exact
  match 0); its rate is shown as "n/a".

- Table 1 on a trained model (`--tables lite0`, not in the default set): the pretrained
  EfficientNet-lite0 (`bench/efficientnet_lite0.py`, eval mode) on 224x224 crops of the foolbox
  samples with their true labels, N = 1 (iDLG), 10, 50, 100, with the label counts.

Usage: `python bench/labels_image.py [--quick] [--batches 100] [--tables 1,3,4]
[--models resnet50,efficientnet_b0] [--sizes 10,50,100,200] [--cache DIR|none]`.
Writes `bench/results/labels_image[_quick].json` and prints the tables with the paper's numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
import zlib
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
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "labels_image"  # git-ignored
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


def score_pair(dw, db, truth, lr=LR, bound: int | None = None) -> dict:
    """RLG (no bound on S) and Yin on one update; with `bound`, also RLG as the fedsim plugin
    runs it (`max_labels` = bound = min(N * K, d / 2)), as `rlgb_*`."""
    rlg = reveal_labels(dw, bias_update=db)
    rlg_labels = rlg.labels if rlg.ok else ()
    yin = yin_labels(-dw / lr)
    out = {f"rlg_{k}": v for k, v in label_set_scores(rlg_labels, truth).items()}
    out.update({f"yin_{k}": v for k, v in label_set_scores(yin.labels, truth).items()})
    out["rlg_not_applicable"] = float(not rlg.ok)
    out["rlg_seconds"] = float(rlg.diagnostics.get("seconds", np.nan))
    if bound is not None:
        # A first estimate within the bound that gave a label set is what the plugin gets too.
        same = rlg.ok and rlg.diagnostics["gap_tries"] == 1 and rlg.diagnostics["rank"] <= bound
        plugin = rlg if same else reveal_labels(dw, bias_update=db, max_labels=bound)
        scores = label_set_scores(plugin.labels if plugin.ok else (), truth)
        out.update({f"rlgb_{k}": v for k, v in scores.items()})
        out["rlgb_not_applicable"] = float(not plugin.ok)
        out["rlgb_fallback"] = float("rank_from" in plugin.diagnostics)
    return out


def plugin_bound(n: int, k: int, head: torch.nn.Linear) -> int:
    """The fedsim plugin's `max_labels` for an image batch: min(N * K, d / 2)."""
    return min(n * k, head.weight.shape[1] // 2)


def mean_rows(rows: list[dict]) -> dict:
    return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def head_features(model: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """(N, d) float32 input of `head` for batch x, in train mode (BatchNorm on batch statistics);
    the model's buffers (BatchNorm running statistics) are restored afterwards."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach()))
    model.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
        model.load_state_dict(state)
    return seen[0].clone()


def head_update(head: torch.nn.Linear, h: torch.Tensor, y: torch.Tensor, lr: float = LR):
    """One SGD step of `head` alone on features h (N, d): the (weight, bias) update
    `after - before` in float32 -- the same numbers as `local_update(..., whole_model=False)`,
    whose backbone gets no step."""
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w, b), y)
    gw, gb = torch.autograd.grad(loss, (w, b))
    with torch.no_grad():
        return (w0 - lr * gw) - w0, (b0 - lr * gb) - b0


def cell_batch(images, name: str, n: int, i: int, seed: int, model, head, cache: Path | None):
    """Batch i of a Table 1 cell: (head features (n, d), labels (n,)). Each batch has its own
    generator (seed, model, N, i), so a cached batch is the batch a fresh run would draw; the
    features are cached under `cache` (the backbone's forward is the slow part)."""
    path = None if cache is None else cache / f"{name}_res{RES}_seed{seed}_n{n}_b{i}.pt"
    if path is not None and path.exists():
        got = torch.load(path)
        return got["h"], got["y"]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{n}/{i}".encode()))
    x = make_batch(images, n, gen)
    y = torch.randint(0, 1000, (n,), generator=gen)
    h = head_features(model, head, x)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"h": h, "y": y}, path.with_suffix(".part"))
        path.with_suffix(".part").replace(path)
    return h, y


def table1(
    images,
    batches,
    seed=0,
    models=("resnet50", "efficientnet_b0"),
    sizes=(10, 50, 100, 200),
    cache: Path | None = None,
):
    cells = []
    for name in models:
        torch.manual_seed(0)
        model, head = build(name)
        for n in sizes:
            rows, t = [], time.perf_counter()
            for i in range(batches):
                h, y = cell_batch(images, name, n, i, seed, model, head, cache)
                dw, db = head_update(head, h, y)
                rows.append(score_pair(dw, db, sorted(set(y.tolist()))))
            cell = {"model": name, "N": n, "batches": batches, **mean_rows(rows)}
            cell["seconds"] = time.perf_counter() - t
            cell["paper"] = PAPER_T1.get((name, n), {})
            cells.append(cell)
            print_row("T1", f"{name} N={n}", cell)
    return cells


def table1_lite0(batches: int, seed: int = 0, sizes=(1, 10, 50, 100), cache: Path | None = CACHE):
    """Table 1 on a trained model: EfficientNet-lite0 with its ImageNet weights (eval mode), N
    augmented 224x224 crops of the 20 foolbox samples with their TRUE labels (19 classes, so
    larger batches repeat classes as near-duplicate crops), one SGD step of the head. RLG, Yin,
    iDLG (N = 1) and the label counts: RLG's own (`counts` of `reveal_labels`) and RLG's label set
    + `attacks.rlg_counts.softmax_counts` (N known), scored as exact / given / wrong."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from efficientnet_lite0 import crop_pool, load_efficientnet_lite0

    from attacks.baselines import idlg_label
    from attacks.rlg_counts import softmax_counts
    from fedcore import not_applicable

    model = load_efficientnet_lite0()
    feats, labels = crop_pool(model, 16, seed, cache)
    weight, bias = model._fc.weight.detach(), model._fc.bias.detach()
    cells = []
    for n in sizes:
        rng = np.random.default_rng([seed, n, 7])
        rows, t, errors = [], time.perf_counter(), []
        for _ in range(batches):
            pick = rng.integers(0, len(labels), n)
            h, y = torch.from_numpy(feats[pick]), torch.from_numpy(labels[pick]).long()
            dw, db = head_update(model._fc, h, y)
            truth = {int(c): int(k) for c, k in zip(*np.unique(y.numpy(), return_counts=True))}
            try:
                rlg = reveal_labels(dw, bias_update=db)
            except Exception as err:  # an error in RLG is an abstention here, counted
                rlg = not_applicable(f"error: {type(err).__name__}: {err}")
                errors.append(rlg.message)
            yin = yin_labels(-dw / LR)
            found, true_set = (rlg.labels if rlg.ok else ()), sorted(truth)
            row = {f"rlg_{k}": v for k, v in label_set_scores(found, true_set).items()}
            row.update({f"yin_{k}": v for k, v in label_set_scores(yin.labels, true_set).items()})
            row["rlg_not_applicable"] = float(not rlg.ok)
            row["rlg_counts_exact"] = float(rlg.ok and rlg.counts == truth)
            est = None
            if rlg.ok and len(rlg.labels) <= n:
                scale = -n / LR
                est = softmax_counts(
                    scale * dw, scale * db, weight, bias, n, list(rlg.labels), max_seconds=10.0
                )
            given = est is not None and est.counts is not None
            row["counts_given"] = float(given)
            row["counts_exact"] = float(given and est.counts == truth)
            row["counts_wrong"] = float(given and est.counts != truth)
            if n == 1:
                row["idlg_exact"] = float(idlg_label(-dw / LR, -db / LR).labels == tuple(truth))
            p = torch.softmax(F.linear(h, weight, bias), dim=1)
            row["accuracy"] = float((p.argmax(1) == y).float().mean())
            row["p_true"] = float(p[torch.arange(n), y].mean())
            rows.append(row)
        cell = {"model": "efficientnet_lite0", "N": n, "batches": batches, **mean_rows(rows)}
        cell["seconds"], cell["rlg_errors"] = time.perf_counter() - t, errors
        cells.append(cell)
        print_row("T1", f"efficientnet_lite0 N={n}", cell)
        print(
            f"   counts: RLG's own exact {cell['rlg_counts_exact']:.2f} | RLG set + softmax counts "
            f"exact {cell['counts_exact']:.2f}, given {cell['counts_given']:.2f}, wrong "
            f"{cell['counts_wrong']:.2f} | model top-1 {cell['accuracy']:.2f}, p(true) "
            f"{cell['p_true']:.2f}" + (f" | iDLG {cell['idlg_exact']:.2f}" if n == 1 else ""),
            flush=True,
        )
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
            truth = sorted(set(torch.cat(ys).tolist()))
            rows.append(score_pair(dw, db, truth, bound=plugin_bound(n, k, head)))
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
            rows[name].append(score_pair(up["w"], up["b"], truth, bound=plugin_bound(n, 1, head)))
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
    if "rlgb_exact" in c:
        print(
            f"{table} {'':<26} RLG, plugin bound: P {c['rlgb_precision']:.3f} R "
            f"{c['rlgb_recall']:.3f} F1 {c['rlgb_f1']:.3f} EM {c['rlgb_exact']:.2f} (n/a "
            f"{c['rlgb_not_applicable']:.2f}, steep-gap fallback {c['rlgb_fallback']:.2f})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 batches per cell, N <= 50")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--tables", default="1,3,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="resnet50,efficientnet_b0", help="Table 1 models")
    parser.add_argument("--sizes", default="10,50,100,200", help="Table 1 batch sizes N")
    parser.add_argument(
        "--cache",
        type=Path,
        default=CACHE,
        help="folder for Table 1's head features (reused across runs); 'none' disables",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = 3 if args.quick else args.batches
    gen = torch.Generator().manual_seed(args.seed)
    images = load_images()
    tables = {t.strip() for t in args.tables.split(",")}
    start, load = time.perf_counter(), os.getloadavg()
    out = {"bench": "labels_image", "quick": args.quick, "batches": batches, "resolution": RES}
    if "1" in tables:
        sizes = tuple(int(n) for n in args.sizes.split(","))
        sizes = tuple(n for n in sizes if n <= 50) if args.quick else sizes
        cache = None if str(args.cache) == "none" else args.cache
        models = tuple(m.strip() for m in args.models.split(","))
        out["table1"] = table1(images, batches, args.seed, models, sizes, cache)
    if "lite0" in tables:  # Table 1 on the pretrained EfficientNet-lite0 (true labels)
        cache = None if str(args.cache) == "none" else args.cache
        out["table1_lite0"] = table1_lite0(batches, args.seed, cache=cache)
    if "3" in tables:
        out["table3"] = table3(images, batches, gen)
    if "4" in tables:
        out["table4"] = table4(images, batches, gen)
    out["seconds"] = time.perf_counter() - start
    out["load_average_before"], out["load_average_after"] = load, os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "labels_image_lite0" if tables == {"lite0"} else "labels_image"  # own file: no clobber
    path = RESULTS / (f"{name}_quick.json" if args.quick else f"{name}.json")
    path.write_text(json.dumps(merge_results(path, out), indent=2))
    print(f"total {out['seconds']:.0f}s; wrote {path}")


def merge_results(path: Path, out: dict) -> dict:
    """`out` over the results already in `path`: tables not rerun are kept, and Table 1 cells
    are replaced per (model, N), so a run of some cells updates only those."""
    if not path.exists():
        return out
    old = json.loads(path.read_text())
    merged = {**old, **out}
    if "table1" in out and "table1" in old:
        new_keys = {(c["model"], c["N"]) for c in out["table1"]}
        kept = [c for c in old["table1"] if (c["model"], c["N"]) not in new_keys]
        merged["table1"] = kept + out["table1"]
    return merged


if __name__ == "__main__":
    main()
