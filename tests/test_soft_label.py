"""Soft-label inversion: known soft labels from synthetic single-sample gradients, and the plugin
on a real one-step SGD update of a tiny torch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.soft_label import SoftLabel, label_kind, recover_soft_label
from attacks.soft_label_attack import SoftLabelAttack
from fedcore import NOT_APPLICABLE, ModelSpec, ServerView, Truth

C, D = 10, 32


def _label(kind: str, rng: np.random.Generator, c: int = C) -> np.ndarray:
    y = np.zeros(c)
    a = int(rng.integers(c))
    if kind == "hard":
        y[a] = 1.0
    elif kind == "smoothing":  # PyTorch convention: (1 - eps) one-hot + eps / C
        eps = rng.uniform(0.01, 0.5)
        y[:] = eps / c
        y[a] += 1 - eps
    else:
        b = (a + int(rng.integers(1, c))) % c
        w = rng.uniform(0.05, 0.95)
        y[a], y[b] = w, 1 - w
    return y


def _problem(kind: str, seed: int, sign: float = 1.0, scale: float = 1.0, c: int = C):
    """W, b, h, y and the float32 gradient G = g h^T, g = softmax(W h + b) - y."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-0.5, 0.5, (c, D))
    b = rng.uniform(-0.5, 0.5, c)
    h = sign * np.abs(rng.normal(size=D)) * scale
    y = _label(kind, rng, c)
    z = w @ h + b
    p = np.exp(z - z.max())
    p /= p.sum()
    g = p - y
    return w, b, h, y, np.outer(g, h).astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize("kind", ["hard", "smoothing", "mixup"])
@pytest.mark.parametrize("with_bias_grad", [True, False])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_recovers_known_soft_label(kind, with_bias_grad, sign):
    for seed in range(4):
        w, b, h, y, grad, g = _problem(kind, seed, sign)
        out = recover_soft_label(grad, w, b, g if with_bias_grad else None)
        assert isinstance(out, SoftLabel) and out.ok
        assert np.abs(out.label - y).sum() < 1e-4
        assert out.kind == kind
        cos = out.features @ h / np.linalg.norm(out.features) / np.linalg.norm(h)
        assert cos > 1 - 1e-8
        assert np.linalg.norm(out.features - h) / np.linalg.norm(h) < 1e-4
        assert not out.diagnostics["ambiguous"]
        method = "closed_form" if with_bias_grad else "root_search"
        assert out.diagnostics["method"] == method
        if not with_bias_grad:  # h = lam v with the sign of v fixed by sum(v) >= 0
            assert np.sign(out.diagnostics["lam"]) == sign


def test_layer_without_bias_and_torch_inputs():
    w, _, h, y, grad, _ = _problem("smoothing", 7)
    z = w @ h
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    grad = torch.from_numpy(np.outer(p - y, h).astype(np.float32))
    out = recover_soft_label(grad, torch.from_numpy(w.astype(np.float32)), kind="smoothing")
    assert out.ok and np.abs(out.label - y).sum() < 1e-4 and out.kind == "smoothing"
    eps = out.diagnostics["epsilon"]
    assert eps == pytest.approx(C * y.min(), abs=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["smoothing", "mixup", "hard"]),
    scale=st.floats(0.2, 3.0),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_root_search_property(seed, kind, scale, sign):
    w, b, _h, y, grad, _ = _problem(kind, seed, sign, scale)
    out = recover_soft_label(grad, w, b)
    assert out.ok
    assert np.abs(out.label - y).sum() < 1e-3
    assert out.kind == kind


def test_batch_of_two_is_not_applicable():
    w, b, _, _, grad1, _ = _problem("smoothing", 1)
    _, _, _, _, grad2, _ = _problem("mixup", 2)
    out = recover_soft_label(grad1 + grad2, w, b)
    assert out.status == NOT_APPLICABLE and "rank one" in out.message
    assert out.diagnostics["rank_ratio"] > 1e-3
    assert recover_soft_label(np.zeros((C, D)), w, b).status == NOT_APPLICABLE


def test_rows_not_summing_to_zero_is_not_applicable():
    w, b, h, _, _, _ = _problem("hard", 3)
    g = np.linspace(0.1, 1.0, C)  # not p - y: sums to 5.5
    out = recover_soft_label(np.outer(g, h), w, b)
    assert out.status == NOT_APPLICABLE and "sum to zero" in out.message


def test_saturated_smoothing_is_flagged_ambiguous():
    # logits ~ 100 apart: softmax is one-hot in float64, so h -> t h, g -> g / t leaves the
    # gradient and the prediction unchanged: the smoothing label is not identifiable.
    w, b, _h, _y, grad, _ = _problem("smoothing", 1, scale=60.0)
    out = recover_soft_label(grad, w, b)
    assert out.ok and out.diagnostics["ambiguous"]


def test_three_classes_kind_ambiguity_is_reported():
    # With C = 3 one equation fixes lam for each format: smoothing and mixup both fit, so the
    # label is never identifiable without the bias gradient and every case must be flagged
    # (seeds 0-5 give 2 to 9 valid roots; seeds 3 and 4 even pick the mixup reading).
    for seed in range(6):
        w, b, _, _y, grad, _ = _problem("smoothing", seed, c=3)
        out = recover_soft_label(grad, w, b)
        assert out.ok, seed
        assert out.diagnostics["ambiguous"] and out.diagnostics["num_valid_roots"] > 1, seed
        assert out.diagnostics.get("rival_lams"), seed  # flagged for competing labels


def test_bad_inputs_raise():
    w, b, _, _, grad, g = _problem("hard", 0)
    with pytest.raises(ValueError, match="kind"):
        recover_soft_label(grad, w, b, kind="cutmix")
    with pytest.raises(ValueError, match=r"\(C, d\)"):
        recover_soft_label(grad.T, w, b)
    with pytest.raises(ValueError, match="bias"):
        recover_soft_label(grad, w, None, g)
    with pytest.raises(ValueError, match="non-finite"):
        recover_soft_label(np.full((C, D), np.nan), w, b)


def test_label_kind_and_score():
    rng = np.random.default_rng(0)
    for kind in ("hard", "smoothing", "mixup"):
        assert label_kind(_label(kind, rng)) == kind
    w, b, h, y, grad, g = _problem("mixup", 4)
    out = recover_soft_label(grad, w, b, g)
    truth = Truth(
        labels=np.array([[int(np.argmax(y))]]), soft_labels=y[None, None], features=h[None, None]
    )
    s = out.score(truth)
    assert s["success"] == 1.0 and s["l1"] < 1e-4 and s["kind_correct"] == 1.0
    assert s["feature_cosine"] > 0.999999 and s["paper_success"] == 1.0
    bad = SoftLabel(label=np.roll(y, 1), features=h, kind="mixup")
    assert bad.score(truth)["success"] == 0.0
    hard = Truth(labels=np.array([[3]]))
    assert SoftLabel(label=np.eye(C)[3], kind="hard").score(hard)["l1"] == 0.0


# --- plugin on a real one-step SGD update -------------------------------------------------


def _build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))


SPEC = ModelSpec(
    task="image",
    name="tiny",
    num_classes=5,
    last_weight="2.weight",
    last_bias="2.bias",
    build=_build,
)


def _view(target: torch.Tensor, lr: float = 0.05, batch_size: int = 1, seed: int = 0):
    model = _build()
    torch.manual_seed(seed + 1)
    x = torch.randn(batch_size, 20)
    feats = model[1](model[0](x)).detach()
    loss = lambda m: F.cross_entropy(m(x), target.expand(batch_size, -1))  # noqa: E731
    view = ServerView.from_local_steps(model, [loss], SPEC, lr, batch_size=batch_size)
    truth = Truth(
        labels=np.array([[int(target.argmax())]]),
        soft_labels=target.numpy()[None],
        features=feats.numpy()[None],
    )
    return view, truth


@pytest.mark.parametrize("use_bias_grad", [True, False])
@pytest.mark.parametrize(
    "target",
    [[0.05, 0.05, 0.8, 0.05, 0.05], [0.0, 0.3, 0.0, 0.7, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]],
)
def test_plugin_on_real_sgd_step(use_bias_grad, target):
    view, truth = _view(torch.tensor([target]))
    attack = SoftLabelAttack(use_bias_grad=use_bias_grad)
    assert attack.name == "soft_label"
    assert attack.check(SPEC, view.train_config) is None
    finding = attack(view, {})
    assert finding.ok, finding.message
    scores = finding.score(truth)
    assert scores["success"] == 1.0 and scores["kind_correct"] == 1.0
    assert scores["feature_cosine"] > 0.9999
    assert finding.diagnostics["update_noise"] < 1e-4


def test_plugin_check_and_batch_of_two():
    attack = SoftLabelAttack()
    assert "batch_size" in attack.check(SPEC, {"lr": 0.1, "batch_size": 4, "local_steps": 1})
    assert "local_steps" in attack.check(SPEC, {"lr": 0.1, "batch_size": 1, "local_steps": 3})
    view, _ = _view(torch.tensor([[0.1, 0.1, 0.6, 0.1, 0.1]]), batch_size=2)
    view = ServerView(
        **{**view.__dict__, "train_config": {"lr": 0.05, "local_steps": 1, "batch_size": 1}}
    )
    out = attack(view, {})
    assert out.status == NOT_APPLICABLE and "rank one" in out.message


def test_hydra_config_instantiates():
    from pathlib import Path

    import yaml
    from hydra.utils import instantiate

    path = Path(__file__).parents[1] / "fedsim/conf/attack/soft_label.yaml"
    assert path.read_text().startswith("# @package attack.soft_label")
    attack = instantiate(yaml.safe_load(path.read_text()))
    assert isinstance(attack, SoftLabelAttack) and attack.kind == "auto"
