"""Reconstruction part of `bench/soft_label.py` (also runnable alone).

1. FCN-4 on 64x64 RGB images (12288 -> 1000 -> 1000 -> 1000 -> 10, no biases, ReLU and
   sigmoid), label smoothing eps ~ U(0, 0.5): soft label and last-layer input by root search
   (no bias), then `invert_fcn` layer by layer. Images: the 20 real ImageNet and 20 real
   CIFAR-10 samples of `foolbox==3.3.4`, resized to 64x64. Baseline: DLG on a few of them.
2. LeNet (Fashion-MNIST 28x28, random init, ReLU and sigmoid), label smoothing: gradient
   matching with our recovered label fixed and the fc1 input recovered analytically through
   the fully connected head (feature term), the same without the feature term, and DLG
   (label optimised jointly).

Usage: `python bench/soft_label_recon.py [--quick]` (writes bench/results/soft_label_recon.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attacks.image_metrics import psnr, ssim
from attacks.reconstruction import dlg, gradient_matching, invert_fcn, sample_gradients
from attacks.soft_label import recover_soft_label
from fedsim.data.fashion_mnist import load_fashion_mnist
from fedsim.models.image import LeNet

RESULTS = Path(__file__).parent / "results"


def foolbox_images(size: int = 64) -> torch.Tensor:
    """The 20 ImageNet + 20 CIFAR-10 real samples of foolbox, `(40, 3, size, size)` in [0, 1]."""
    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        raise SystemExit("needs the real image samples of foolbox: pip install -e '.[bench]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    files = sorted(folder.glob("imagenet_*.jpg")) + sorted(folder.glob("cifar10_*.png"))
    imgs = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in files
    ]
    return torch.from_numpy(np.stack(imgs).astype(np.float32) / 255.0).permute(0, 3, 1, 2)


def smoothing_label(rng, num_classes: int = 10) -> torch.Tensor:
    eps = float(rng.uniform(0, 0.5))
    y = torch.full((num_classes,), eps / num_classes)
    y[int(rng.integers(num_classes))] += 1 - eps
    return y


def fcn4(activation: str) -> nn.Module:
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]
    widths = [12288, 1000, 1000, 1000]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in pairwise(widths):
        layers += [nn.Linear(a, b, bias=False), act()]
    return nn.Sequential(*layers, nn.Linear(1000, 10, bias=False))


def head_inversion(params, grads, names, bias_name, activation, soft):
    """Every input of the trailing linear layers `names` from the soft-label finding."""
    w = params[names[-1]].detach().double()
    b = params[bias_name].detach().double() if bias_name in params else 0.0
    delta = (w @ torch.as_tensor(soft.features) + b).softmax(0) - torch.as_tensor(soft.label)
    return invert_fcn([params[n] for n in names], [grads[n] for n in names], delta, activation)


def fcn_benchmark(quick: bool, dlg_images: int | None = None, dlg_iterations: int = 300) -> dict:
    images = foolbox_images()
    if quick:
        images = images[::8]
    n_dlg = dlg_images if dlg_images is not None else (2 if quick else 5)
    rng = np.random.default_rng(0)
    rows, out = [], {}
    for activation in ("relu", "sigmoid"):
        torch.manual_seed(0)
        model = fcn4(activation)
        params = dict(model.named_parameters())
        names = [n for n in params if n.endswith("weight")]
        res = {"psnr": [], "ssim": [], "label_l1": [], "seconds": []}
        for x in images:
            y = smoothing_label(rng)
            grads = sample_gradients(model, x, y)
            t0 = time.perf_counter()
            soft = recover_soft_label(grads[names[-1]], params[names[-1]])
            x_hat = head_inversion(params, grads, names, "", activation, soft)[0]
            res["seconds"].append(time.perf_counter() - t0)
            x_hat = x_hat.reshape(x.shape)
            res["psnr"].append(psnr(x_hat, x.double(), data_range=1.0))
            res["ssim"].append(ssim(x_hat, x.double(), data_range=1.0))
            res["label_l1"].append(float(np.abs(soft.label - y.double().numpy()).sum()))
        base = {"psnr": [], "ssim": []}
        for x in images[:n_dlg]:
            y = smoothing_label(rng)
            r = dlg(model, sample_gradients(model, x, y), x.shape, iterations=dlg_iterations)
            base["psnr"].append(psnr(r.x, x, data_range=1.0))
            base["ssim"].append(ssim(r.x, x, data_range=1.0))
        out[activation] = {"analytic": _agg(res), "dlg": _agg(base)}
        rows.append((activation, out[activation]))
    print("\nFCN-4, 64x64 RGB real images (ImageNet + CIFAR-10 samples of foolbox), no biases")
    print(
        f"{'act':8s} {'method':9s} {'images':>6s} {'PSNR mean':>9s} {'PSNR min':>8s} "
        f"{'SSIM mean':>9s} {'SSIM min':>8s} {'s/img':>6s}"
    )
    for act, r in rows:
        for meth in ("analytic", "dlg"):
            s = r[meth]
            print(
                f"{act:8s} {meth:9s} {s['n']:6d} {s['psnr_mean']:9.1f} {s['psnr_min']:8.1f} "
                f"{s['ssim_mean']:9.4f} {s['ssim_min']:8.4f} {s.get('seconds_mean', 0):6.2f}"
            )
    return out


def _agg(res: dict) -> dict:
    out = {"n": len(res["psnr"])}
    for k, v in res.items():
        a = np.asarray(v, dtype=np.float64)
        out[f"{k}_mean"], out[f"{k}_min"], out[f"{k}_max"] = a.mean(), a.min(), a.max()
    return out


def lenet_benchmark(quick: bool, images: int | None = None, iterations: int | None = None) -> dict:
    data = load_fashion_mnist("test")
    n = images if images is not None else (2 if quick else 6)
    idx = np.random.default_rng(3).choice(len(data), n, replace=False)
    xs = torch.from_numpy(data.images[idx].astype(np.float32) / 255.0)
    iterations = iterations if iterations is not None else (100 if quick else 300)
    rng = np.random.default_rng(1)
    out = {}
    for activation in ("sigmoid", "relu"):
        res = {k: {"psnr": [], "ssim": [], "seconds": []} for k in ("ours", "ours_no_feat", "dlg")}
        for i, x in enumerate(xs):
            torch.manual_seed(i)
            model = LeNet(activation=activation)
            params = dict(model.named_parameters())
            y = smoothing_label(rng)
            grads = sample_gradients(model, x, y)
            soft = recover_soft_label(
                grads["fc3.weight"], params["fc3.weight"], params["fc3.bias"], grads["fc3.bias"]
            )
            names = ["fc1.weight", "fc2.weight", "fc3.weight"]
            conv_feats = head_inversion(params, grads, names, "fc3.bias", activation, soft)[0]
            label = torch.as_tensor(soft.label, dtype=torch.float32)
            common = {"iterations": iterations}
            runs = {
                "ours": (label, {"features": conv_feats.float(), "feature_layer": model.fc1}),
                "ours_no_feat": (label, {}),
                "dlg": (None, {"distance": "l2", "tv": 0.0}),
            }
            for name, (lab, opts) in runs.items():
                t0 = time.perf_counter()
                r = gradient_matching(model, grads, x.shape, lab, **{"tv": 1e-3, **common, **opts})
                res[name]["seconds"].append(time.perf_counter() - t0)
                res[name]["psnr"].append(psnr(r.x, x, data_range=1.0))
                res[name]["ssim"].append(ssim(r.x, x, data_range=1.0))
        out[activation] = {k: _agg(v) for k, v in res.items()}
    print(f"\nLeNet on Fashion-MNIST 28x28, random init, label smoothing, {iterations} Adam steps")
    print(
        f"{'act':8s} {'method':13s} {'images':>6s} {'PSNR mean':>9s} {'SSIM mean':>9s} "
        f"{'s/img':>6s}"
    )
    for act, r in out.items():
        for meth, s in r.items():
            print(
                f"{act:8s} {meth:13s} {s['n']:6d} {s['psnr_mean']:9.1f} {s['ssim_mean']:9.3f} "
                f"{s['seconds_mean']:6.1f}"
            )
    return out


def reconstruction_benchmark(quick: bool, **sizes) -> dict:
    """`sizes`: dlg_images, dlg_iterations (FCN-4), lenet_images, lenet_iterations."""
    torch.set_num_threads(1)
    fcn = {k: sizes[k] for k in ("dlg_images", "dlg_iterations") if sizes.get(k) is not None}
    return {
        "settings": {"quick": quick, **sizes},
        "fcn4": fcn_benchmark(quick, **fcn),
        "lenet": lenet_benchmark(quick, sizes.get("lenet_images"), sizes.get("lenet_iterations")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dlg-images", type=int, default=None, help="FCN-4 images for DLG")
    ap.add_argument("--dlg-iterations", type=int, default=None, help="DLG steps on FCN-4")
    ap.add_argument("--lenet-images", type=int, default=None)
    ap.add_argument("--lenet-iterations", type=int, default=None)
    args = ap.parse_args()
    load = os.getloadavg()
    sizes = {
        k: getattr(args, k)
        for k in ("dlg_images", "dlg_iterations", "lenet_images", "lenet_iterations")
    }
    result = {
        "quick": args.quick,
        "load_average": load,
        **reconstruction_benchmark(args.quick, **sizes),
    }
    result["load_average_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    name = "soft_label_recon_quick.json" if args.quick else "soft_label_recon.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
