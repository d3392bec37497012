"""Input reconstruction from single-sample gradients with the recovered soft label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attacks.image_metrics as im
from attacks.recon_attack import ReconstructAttack, Reconstruction, linear_head
from attacks.reconstruction import (
    dlg,
    fcn_layers,
    gradient_matching,
    invert_fcn,
    sample_gradients,
)
from attacks.soft_label import recover_soft_label
from attacks.soft_label_attack import SoftLabelAttack
from fedcore import NOT_APPLICABLE, ModelSpec, ServerView, Truth
from fedsim.models.image import MLP


def _smooth(c: int, k: int, eps: float) -> torch.Tensor:
    y = torch.full((c,), eps / c)
    y[k] += 1 - eps
    return y


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True])
def test_invert_fcn_is_exact_without_bias_gradients(activation, bias):
    torch.manual_seed(0)
    act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(48, 32, bias=bias),
        act(),
        nn.Linear(32, 24, bias=bias),
        act(),
        nn.Linear(24, 6, bias=bias),
    )
    x = torch.rand(3, 4, 4)
    y = _smooth(6, 2, 0.3)
    grads = sample_gradients(model, x, y)
    params = dict(model.named_parameters())
    names, found_act = fcn_layers(model)
    assert found_act == activation and names[-1] == "5.weight"
    soft = recover_soft_label(grads["5.weight"], params["5.weight"], params.get("5.bias"))
    assert soft.ok and np.abs(soft.label - y.numpy()).sum() < 1e-4
    w = params["5.weight"].detach().double()
    b = params["5.bias"].detach().double() if bias else 0.0
    delta = (w @ torch.as_tensor(soft.features) + b).softmax(0) - torch.as_tensor(soft.label)
    inputs = invert_fcn([params[n] for n in names], [grads[n] for n in names], delta, activation)
    x_hat = inputs[0].reshape(x.shape)
    assert torch.allclose(x_hat, x.double(), atol=1e-4)
    assert im.psnr(x_hat, x, data_range=1.0) > 60


def test_invert_fcn_rejects_bad_shapes():
    with pytest.raises(ValueError, match="one weight gradient"):
        invert_fcn([torch.eye(3)], [], torch.ones(3))
    with pytest.raises(ValueError, match="chain"):
        invert_fcn([torch.ones(4, 3)], [torch.ones(4, 3)], torch.ones(5))
    with pytest.raises(ValueError, match="activation"):
        invert_fcn([torch.ones(4, 3)], [torch.ones(4, 3)], torch.ones(4), "softplus")


class _TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.Sigmoid()
        self.fc1 = nn.Linear(4 * 8 * 8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        h = self.act(self.conv(x)).flatten(1)
        return self.fc2(self.act(self.fc1(h)))


def test_head_detection():
    assert fcn_layers(_TinyCNN()) is None
    assert linear_head(_TinyCNN()) == (["fc1.weight", "fc2.weight"], "sigmoid")
    assert linear_head(MLP(num_classes=3, in_features=8, hidden=(4,)))[0][-1] == "fc.weight"


def test_gradient_matching_with_recovered_label_and_features_beats_dlg():
    torch.manual_seed(1)
    model = _TinyCNN()
    x = torch.rand(1, 8, 8)
    y = _smooth(5, 1, 0.2)
    grads = sample_gradients(model, x, y)
    params = dict(model.named_parameters())
    soft = recover_soft_label(
        grads["fc2.weight"], params["fc2.weight"], params["fc2.bias"], grads["fc2.bias"]
    )
    w, b = params["fc2.weight"].detach().double(), params["fc2.bias"].detach().double()
    delta = (w @ torch.as_tensor(soft.features) + b).softmax(0) - torch.as_tensor(soft.label)
    names = ["fc1.weight", "fc2.weight"]
    conv_out = invert_fcn([params[n] for n in names], [grads[n] for n in names], delta, "sigmoid")
    ours = gradient_matching(
        model,
        grads,
        (1, 8, 8),
        torch.as_tensor(soft.label).float(),
        features=conv_out[0].float(),
        feature_layer=model.fc1,
        iterations=150,
        tv=0.0,
    )
    base = dlg(model, grads, (1, 8, 8), iterations=150)
    assert ours.feature_loss < 1e-3
    assert im.psnr(ours.x, x, data_range=1.0) > im.psnr(base.x, x, data_range=1.0) + 3
    assert im.psnr(ours.x, x, data_range=1.0) > 20
    assert base.label.shape == (5,) and abs(float(base.label.sum()) - 1) < 1e-5
    for p in model.parameters():  # the model is left untouched
        assert p.grad is None


def test_metrics_known_values_and_fallback():
    torch.manual_seed(0)
    ref = torch.rand(1, 16, 16)
    noisy = (ref + 0.1 * torch.randn_like(ref)).clamp(0, 1)
    mse = float(((noisy - ref) ** 2).mean())
    assert im.psnr(noisy, ref, data_range=1.0) == pytest.approx(-10 * np.log10(mse), rel=1e-4)
    assert im.ssim(ref, ref, data_range=1.0) == pytest.approx(1.0)
    s = im.ssim(noisy, ref, data_range=1.0)
    assert 0 < s < 1
    own = im._ssim(im._as_batch(noisy), im._as_batch(ref), 1.0)
    assert own == pytest.approx(s, abs=0.05)  # same constants; border handling may differ
    with pytest.raises(ValueError, match="differ"):
        im.psnr(ref, ref[:, :8])


# --- plugin -------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP(num_classes=5, in_features=36, hidden=(24, 16), activation="relu")


SPEC = ModelSpec(
    task="image",
    name="mlp",
    num_classes=5,
    last_weight="fc.weight",
    last_bias="fc.bias",
    build=_mlp,
    input_shape=(1, 6, 6),
)


def _view(lr: float = 0.1):
    model = _mlp()
    torch.manual_seed(3)
    x = torch.rand(1, 1, 6, 6)
    y = _smooth(5, 4, 0.25)
    loss = lambda m: F.cross_entropy(m(x), y[None])  # noqa: E731
    view = ServerView.from_local_steps(model, [loss], SPEC, lr, batch_size=1)
    truth = Truth(labels=np.array([[4]]), soft_labels=y.numpy()[None, None], inputs=x.numpy()[None])
    return view, truth


def test_reconstruct_plugin_on_fcn_update():
    view, truth = _view()
    soft = SoftLabelAttack()(view, {})
    assert soft.ok and soft.score(truth)["success"] == 1.0
    attack = ReconstructAttack()
    assert attack.name == "reconstruct" and attack.check(SPEC, view.train_config) is None
    rec = attack(view, {"soft_label": soft})
    assert isinstance(rec, Reconstruction) and rec.method == "analytic"
    scores = rec.score(truth)
    assert scores["psnr"] > 40 and scores["ssim"] > 0.99


def test_reconstruct_plugin_needs_soft_label():
    view, _ = _view()
    out = ReconstructAttack()(view, {})
    assert out.status == NOT_APPLICABLE and "soft_label" in out.message
    cfg = {"lr": 0.1, "local_steps": 1, "batch_size": 8}
    assert "batch_size" in ReconstructAttack().check(SPEC, cfg)
