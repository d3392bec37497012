"""Benchmark: soft-label inversion (Wang et al., ICLR 2024 protocol) and image reconstruction.

Recovery part: label smoothing with eps ~ U(0, 0.5) (1000 runs) and mixup of two images of
different classes with weight ~ U(0, 1) (900 runs), per configuration: LeNet and ResNet-18,
random init (every parameter uniform in [-0.5, 0.5], as in the paper) and briefly trained on
Fashion-MNIST, last layer with and without a bias, real images (Fashion-MNIST test split; the 20
real CIFAR-10 samples shipped in PyPI `foolbox==3.3.4`). One sample, one gradient: the last
layer's weight (and bias) gradient of the soft-target cross-entropy, taken by autograd in
float32; `recover_soft_label(kind="auto")` is timed alone.

Strict metric: success iff L1(recovered label, true label) < 1e-3. Also: flagged (the attack
said `ambiguous`), silent failures (failed and not flagged), auto format right, the paper's
criterion (|lam*/lam_hat - 1| < 1e-3), median / p95 ms per recovery.

Reconstruction part: see `bench/soft_label_recon.py` (run by this script unless --no-recon).

Usage: `python bench/soft_label.py [--quick] [--no-recon]`; JSON to bench/results/soft_label.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.soft_label import recover_soft_label
from fedsim.data.fashion_mnist import load_fashion_mnist
from fedsim.models.image import LeNet, resnet18

RESULTS = Path(__file__).parent / "results"


def fashion_mnist(split: str, n: int | None = None, seed: int = 0):
    """`(n, 1, 28, 28)` float32 in [0, 1] and labels."""
    data = load_fashion_mnist(split)
    idx = (
        np.arange(len(data))
        if n is None
        else np.random.default_rng(seed).choice(len(data), n, replace=False)
    )
    x = torch.from_numpy(data.images[idx].astype(np.float32) / 255.0)
    return x, torch.from_numpy(data.labels[idx])


def cifar10_samples():
    """The 20 real CIFAR-10 test images of `foolbox==3.3.4` `(20, 3, 32, 32)` in [0, 1]."""
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("cifar10_*.png"))
    x = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255.0 for p in files])
    y = [int(p.stem.split("_")[-1]) for p in files]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y)


def uniform_init(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


MODELS = {"lenet": LeNet, "resnet18": resnet18}  # the two models of the paper's table


def build_image_model(name: str, **options) -> nn.Module:
    return MODELS[name](num_classes=10, **options)


def last_layer(model: nn.Module, name: str) -> nn.Linear:
    return model.get_submodule(model.last_layer)


def train_briefly(name: str, steps: int, batch: int = 64, lr: float = 0.05) -> nn.Module:
    """SGD on Fashion-MNIST with hard labels (default init), a few hundred steps at most."""
    torch.manual_seed(0)
    model = build_image_model(name)
    x, y = fashion_mnist("train", steps * batch, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for i in range(steps):
        xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    xt, yt = fashion_mnist("test", 1000, seed=2)
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    print(f"  trained {name}: {steps} steps of {batch}, test accuracy {acc:.3f}", flush=True)
    return model


def features_and_grads(model: nn.Module, fc: nn.Linear, x: torch.Tensor, y: torch.Tensor):
    """One sample in train mode: the last layer's input h and the soft-target CE gradients,
    for the layer with its bias and for the same layer without a bias."""
    box = {}
    hook = fc.register_forward_hook(lambda m, inp, out: box.setdefault("h", inp[0].detach()))
    model.train()
    with torch.no_grad():
        model(x[None])
    hook.remove()
    h = box["h"]
    out = {}
    for with_bias in (True, False):
        w = fc.weight.detach().clone().requires_grad_(True)
        b = fc.bias.detach().clone().requires_grad_(True) if with_bias else None
        loss = F.cross_entropy(F.linear(h, w, b), y[None])
        grads = torch.autograd.grad(loss, [w] + ([b] if with_bias else []))
        out[with_bias] = (
            grads[0],
            grads[1] if with_bias else None,
            w.detach(),
            b.detach() if with_bias else None,
        )
    return h[0].double().numpy(), out


def soft_targets(kind: str, rng, x, labels, num_classes: int = 10):
    """One (input, soft label) pair: smoothing eps ~ U(0, 0.5) or mixup weight ~ U(0, 1)."""
    i = int(rng.integers(len(labels)))
    y = torch.zeros(num_classes)
    if kind == "smoothing":
        eps = float(rng.uniform(0, 0.5))
        y += eps / num_classes
        y[labels[i]] += 1 - eps
        return x[i], y
    others = np.flatnonzero(labels.numpy() != int(labels[i]))
    j = int(rng.choice(others))
    w = float(rng.uniform(0, 1))
    y[labels[i]] += w
    y[labels[j]] += 1 - w
    return w * x[i] + (1 - w) * x[j], y


def run_config(model, name, x, labels, runs: dict[str, int], seed: int) -> dict[str, dict]:
    fc = last_layer(model, name)
    rng = np.random.default_rng(seed)
    rows = {True: [], False: []}
    for kind, n in runs.items():
        for _ in range(n):
            xi, y = soft_targets(kind, rng, x, labels)
            h, grads = features_and_grads(model, fc, xi, y)
            for with_bias, (gw, gb, w, b) in grads.items():
                t0 = time.perf_counter()
                out = recover_soft_label(gw, w, b, gb, kind="auto")
                dt = time.perf_counter() - t0
                rows[with_bias].append(_score(out, y.double().numpy(), h, kind, dt))
    return {("bias" if k else "no_bias"): _summary(v) for k, v in rows.items()}


def _score(out, y, h, kind, dt) -> dict:
    row = {"kind": kind, "ms": 1000 * dt, "ok": out.ok}
    if not out.ok:
        return {**row, "l1": float("inf"), "flagged": True, "kind_right": False, "paper": False}
    h_hat = out.features
    lam_ratio = float(h @ h_hat) / float(h_hat @ h_hat)
    return {
        **row,
        "l1": float(np.abs(out.label - y).sum()),
        "flagged": bool(out.diagnostics.get("ambiguous")) or not out.diagnostics.get("valid", 1),
        "kind_right": out.kind == kind,
        "paper": abs(lam_ratio - 1) < 1e-3,
        "feature_rel_error": float(np.linalg.norm(h_hat - h) / max(np.linalg.norm(h), 1e-300)),
    }


def _summary(rows: list[dict]) -> dict:
    out = {}
    for kind in ("smoothing", "mixup", "all"):
        sel = [r for r in rows if kind == "all" or r["kind"] == kind]
        if not sel:
            continue
        fail = [r for r in sel if not r["l1"] < 1e-3]
        ms = np.array([r["ms"] for r in sel])
        out[kind] = {
            "runs": len(sel),
            "failures": len(fail),
            "flagged": sum(r["flagged"] for r in sel),
            "silent_failures": sum(not r["flagged"] for r in fail),
            "auto_kind_right": float(np.mean([r["kind_right"] for r in sel])),
            "paper_criterion": float(np.mean([r["paper"] for r in sel])),
            "max_l1_success": max((r["l1"] for r in sel if r["l1"] < 1e-3), default=None),
            "median_ms": float(np.median(ms)),
            "p95_ms": float(np.percentile(ms, 95)),
        }
    return out


def recovery_benchmark(
    quick: bool,
    resnet_runs: int | None = None,
    sink=None,
    models: tuple[str, ...] = ("lenet", "resnet18"),
    inits: tuple[str, ...] = ("random", "trained"),
) -> list[dict]:
    """All configurations; `resnet_runs` caps the smoothing runs of ResNet-18 (mixup: 0.9x);
    `sink(rows)` is called after every configuration (incremental results)."""
    runs = {"smoothing": 50, "mixup": 45} if quick else {"smoothing": 1000, "mixup": 900}
    fx, fy = fashion_mnist("test")
    cifar = cifar10_samples()
    results: list[dict] = []
    steps = {"lenet": 100 if quick else 400, "resnet18": 15 if quick else 60}
    for name in models:
        n_runs = runs
        if name == "resnet18" and resnet_runs and not quick:
            n_runs = {"smoothing": resnet_runs, "mixup": int(0.9 * resnet_runs)}
        torch.manual_seed(0)
        nets = {"random": uniform_init(build_image_model(name))} if "random" in inits else {}
        if "trained" in inits:
            nets["trained"] = train_briefly(name, steps[name])
        for init, model in nets.items():
            results += _one(model, name, init, "fashion-mnist", fx, fy, n_runs)
            if sink:
                sink(results)
        if cifar is not None and "random" in inits:
            torch.manual_seed(0)
            model = uniform_init(build_image_model(name, in_channels=3))
            cx, cy = cifar
            if name == "lenet":  # LeNet's fc1 expects 28x28: centre crop
                cx = cx[:, :, 2:30, 2:30]
            results += _one(model, name, "random", "cifar10(20 real)", cx, cy, n_runs)
            if sink:
                sink(results)
    return results


def _one(model, name, init, data, x, y, runs) -> list[dict]:
    t0 = time.time()
    res = run_config(model, name, x, y, runs, seed=zlib.crc32(f"{name}/{init}/{data}".encode()))
    rows = [{"model": name, "init": init, "data": data, "bias": b, **s} for b, s in res.items()]
    print(f"  {name:8s} {init:7s} {data:17s} done in {time.time() - t0:.0f} s", flush=True)
    return rows


def print_recovery(rows: list[dict]) -> None:
    head = (
        f"{'model':8s} {'init':7s} {'data':17s} {'bias':7s} {'kind':9s} {'runs':>5s} "
        f"{'fail':>4s} {'flag':>4s} {'silent':>6s} {'auto%':>6s} {'paper%':>6s} "
        f"{'med ms':>6s} {'p95 ms':>6s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        for kind in ("smoothing", "mixup"):
            s = r[kind]
            print(
                f"{r['model']:8s} {r['init']:7s} {r['data']:17s} {r['bias']:7s} {kind:9s} "
                f"{s['runs']:5d} {s['failures']:4d} {s['flagged']:4d} {s['silent_failures']:6d} "
                f"{100 * s['auto_kind_right']:6.1f} {100 * s['paper_criterion']:6.1f} "
                f"{s['median_ms']:6.1f} {s['p95_ms']:6.1f}"
            )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few runs (about a minute or two)")
    ap.add_argument("--no-recon", action="store_true", help="skip the reconstruction part")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--resnet-runs",
        type=int,
        default=None,
        help="cap ResNet-18 runs per configuration (smoothing; mixup 0.9x)",
    )
    ap.add_argument("--models", default="lenet,resnet18", help="comma-separated subset")
    ap.add_argument("--inits", default="random,trained", help="comma-separated subset")
    ap.add_argument("--out", default=None, help="JSON file name under bench/results/")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"soft-label recovery ({'quick' if args.quick else 'full'}); load {load[0]:.2f}")
    RESULTS.mkdir(exist_ok=True)
    name = args.out or ("soft_label_quick.json" if args.quick else "soft_label.json")
    result = {
        "quick": args.quick,
        "load_average": load,
        "torch_threads": args.threads,
        "resnet_runs": args.resnet_runs,
    }

    def sink(rows: list[dict]) -> None:
        result["recovery"] = rows
        (RESULTS / name).write_text(json.dumps(result, indent=1, default=float))

    models, inits = tuple(args.models.split(",")), tuple(args.inits.split(","))
    rows = recovery_benchmark(args.quick, args.resnet_runs, sink, models, inits)
    print_recovery(rows)
    result["recovery"] = rows
    if not args.no_recon:
        sys.path.insert(0, str(Path(__file__).parent))
        from soft_label_recon import reconstruction_benchmark

        result["reconstruction"] = reconstruction_benchmark(args.quick)
    result["load_average_end"] = os.getloadavg()
    (RESULTS / name).write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
