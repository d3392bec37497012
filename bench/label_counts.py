"""Label counts (the batch's class histogram) from one client update: RLG vs LLG, iLRG, LLBG.

Setup (stated, not hidden):
- Models: fedsim's LeNet (ReLU), ResNet-18 (ReLU, BatchNorm) and, in the full run,
  EfficientNet-B0 (SiLU), random init (seed 0), Fashion-MNIST (C = 10), train mode (BatchNorm on
  batch statistics), one plain SGD step (lr 0.1) of mean cross-entropy. Only the last layer's
  update matters to these attacks; it is the exact one-step update `-lr * grad`.
- Batches: N samples drawn uniformly from the training split (so labels repeat), one step
  (K = 1); the global model is the same for every batch of a model.
- Attacks (N known from the train config for all but RLG): RLG (`attacks.rlg.reveal_labels` with
  the bias update: S estimated from the spectrum, counts from the bias when the label set is
  found), LLG, LLG* and LLG+ (`attacks.llg`, dummy statistics from 256 standard-normal inputs,
  64 with --quick),
  iLRG (`attacks.ilrg`), LLBG with a uniform prior and with the dummy prior (`attacks.llbg`).
- Scores: `exact` = share of batches whose histogram is recovered exactly (a `not_applicable`
  result or `counts=None` counts as a miss), `L1` = mean L1 distance of the counts over the
  batches with counts, `given` = share of batches with counts.

Usage: `python bench/label_counts.py [--quick] [--batches 50]`. Writes
`bench/results/label_counts[_quick].json` and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attacks.count_attacks import ILRGAttack, LLBGAttack, LLGAttack
from attacks.metrics import count_l1
from attacks.rlg import reveal_labels
from fedcore import ModelSpec, ServerView, frozen_tensors
from fedsim.data.fashion_mnist import load_fashion_mnist
from fedsim.models.image import LeNet, efficientnet_b0, resnet18
from fedsim.tasks.image import MEAN, STD

RESULTS = Path(__file__).resolve().parent / "results"
LR = 0.1
BUILDERS = {"lenet": LeNet, "resnet18": resnet18, "efficientnet_b0": efficientnet_b0}
METHODS = ("rlg", "llg", "llg_star", "llg_plus", "ilrg", "llbg", "llbg_dummy")


def attacks(dummy_samples: int) -> dict:
    return {
        "llg": LLGAttack(),
        "llg_star": LLGAttack("llg_star", dummy_samples=dummy_samples),
        "llg_plus": LLGAttack("llg_plus", dummy_samples=dummy_samples),
        "ilrg": ILRGAttack(),
        "llbg": LLBGAttack(),
        "llbg_dummy": LLBGAttack("dummy", dummy_samples=dummy_samples),
    }


def spec_of(name: str) -> tuple[ModelSpec, torch.nn.Module]:
    torch.manual_seed(0)
    model = BUILDERS[name](num_classes=10)
    last = model.last_layer
    spec = ModelSpec(
        task="image",
        name=name,
        num_classes=10,
        last_weight=f"{last}.weight",
        last_bias=f"{last}.bias",
        build=lambda: BUILDERS[name](num_classes=10),
        input_shape=(1, 28, 28),
    )
    return spec, model


def one_step_view(model, spec, x, y) -> ServerView:
    """The view of one SGD step; only the last layer's update is computed (others zero)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head = model.get_submodule(spec.last_weight.rsplit(".", 1)[0])
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    head.weight.requires_grad_(True)
    head.bias.requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    gw, gb = torch.autograd.grad(loss, [head.weight, head.bias])
    model.load_state_dict(state)  # undo BatchNorm's running statistics
    update = {k: torch.zeros_like(v) for k, v in state.items()}
    update[spec.last_weight], update[spec.last_bias] = -LR * gw, -LR * gb
    n = len(y)
    return ServerView(
        round=1,
        client_id=0,
        global_model=frozen_tensors(state),
        update=frozen_tensors(update),
        train_config={"lr": LR, "local_steps": 1, "batch_size": n},
        num_examples=n,
        model=spec,
    )


def run_cell(name: str, n: int, batches: int, rng: np.random.Generator, dummy: int) -> dict:
    spec, model = spec_of(name)
    plugins = attacks(dummy)
    data = load_fashion_mnist("train")
    rows = {m: {"exact": [], "l1": [], "seconds": []} for m in METHODS}
    start = time.perf_counter()
    for _ in range(batches):
        picks = rng.integers(0, len(data), n)
        x = (torch.from_numpy(data.images[picks]).float() / 255 - MEAN) / STD
        y = torch.from_numpy(data.labels[picks])
        truth = {int(c): int(k) for c, k in zip(*np.unique(y.numpy(), return_counts=True))}
        view = one_step_view(model, spec, x, y)
        for method in METHODS:
            t = time.perf_counter()
            if method == "rlg":
                w, b = view.last_layer_update()
                found = reveal_labels(w, bias_update=b)
            else:
                found = plugins[method](view, {})
            rows[method]["seconds"].append(time.perf_counter() - t)
            counts = found.counts if found.ok else None
            l1 = count_l1(counts, truth) if counts is not None else np.nan
            rows[method]["l1"].append(l1)
            rows[method]["exact"].append(float(l1 == 0))
    cell = {"model": name, "N": n, "batches": batches, "dummy_samples": dummy}
    cell["seconds"] = time.perf_counter() - start
    for method, r in rows.items():
        l1 = np.asarray(r["l1"])
        cell[method] = {
            "exact": float(np.mean(r["exact"])),
            "l1": float(np.nanmean(l1)) if np.isfinite(l1).any() else None,
            "given": float(np.mean(np.isfinite(l1))),
            "seconds": float(np.mean(r["seconds"])),
        }
    return cell


def print_table(cells: list[dict]) -> None:
    head = f"{'model':<16}{'N':>4}  " + "  ".join(f"{m:>14}" for m in METHODS)
    print(head + "\n" + "-" * len(head))
    for c in cells:
        parts = []
        for m in METHODS:
            r = c[m]
            l1 = "-" if r["l1"] is None else f"{r['l1']:.1f}"
            parts.append(f"{r['exact']:>8.2f} / {l1:>4}")
        print(f"{c['model']:<16}{c['N']:>4}  " + "  ".join(parts), flush=True)
    print("cells: exact-histogram rate / mean L1 of the counts (over batches with counts)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="N = 10, 5 batches, 64 dummy inputs, no EffNet"
    )
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--dummy-samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = 5 if args.quick else args.batches
    models = ("lenet", "resnet18") if args.quick else tuple(BUILDERS)
    sizes = (10,) if args.quick else (4, 10, 50)
    dummy = 64 if args.quick else args.dummy_samples
    rng = np.random.default_rng(args.seed)
    start, load = time.perf_counter(), os.getloadavg()
    cells = []
    for name in models:
        for n in sizes:
            cells.append(run_cell(name, n, batches, rng, dummy))
            print(f"{name} N={n}: {cells[-1]['seconds']:.1f}s", flush=True)
    print_table(cells)
    out = {"bench": "label_counts", "quick": args.quick, "batches": batches, "lr": LR}
    out["cells"] = cells
    out["seconds"] = time.perf_counter() - start
    out["load_average_before"], out["load_average_after"] = load, os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("label_counts_quick.json" if args.quick else "label_counts.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"total {out['seconds']:.0f}s; wrote {path}")


if __name__ == "__main__":
    main()
