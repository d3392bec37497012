"""Yin et al. Eq. (5) and iDLG on synthetic softmax cross-entropy gradients with known labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.baselines import idlg_label, yin_labels

ACTS = {
    "relu": lambda z: np.maximum(z, 0),
    "silu": lambda z: z / (1 + np.exp(-z)),
    "tanh": np.tanh,
}


def ce_grads(rng, labels, num_classes, dim, act):
    """Weight (C, d) and bias (C,) gradients of the summed softmax CE: dW = G^T H, db = G^T 1."""
    n = len(labels)
    h = ACTS[act](rng.normal(size=(n, dim)))
    logits = h @ rng.normal(scale=0.3, size=(dim, num_classes))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = p.copy()
    g[np.arange(n), labels] -= 1
    return g.T @ h, g.sum(0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6))
def test_yin_relu_never_false_positive(seed, n):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 40, size=n)
    dw, _ = ce_grads(rng, labels, 40, 32, "relu")
    found = set(yin_labels(dw).labels)
    assert found <= set(labels.tolist())  # non-label rows of a ReLU gradient are >= 0
    if n == 1:
        assert found == set(labels.tolist())


def test_yin_signed_features_flag_almost_everything():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, size=5)
    dw, _ = ce_grads(rng, labels, 100, 64, "silu")
    result = yin_labels(torch.tensor(dw, dtype=torch.float32))
    assert set(labels.tolist()) <= set(result.labels)
    assert len(result.labels) > 90  # precision ~ 5/100: the rule needs non-negative features


def test_yin_top_n_rule():
    rng = np.random.default_rng(1)
    labels = np.array([3, 17, 29])
    dw, _ = ce_grads(rng, labels, 50, 64, "relu")
    result = yin_labels(dw, num_labels=3)
    assert result.labels == (3, 17, 29) and result.num_labels == 3
    with pytest.raises(ValueError, match="num_labels"):
        yin_labels(dw, num_labels=51)


@pytest.mark.parametrize("act", ["relu", "silu", "tanh"])
def test_idlg_single_sample(act):
    rng = np.random.default_rng(2)
    for label in (0, 7, 19):
        dw, db = ce_grads(rng, np.array([label]), 20, 16, act)
        assert idlg_label(torch.tensor(dw), torch.tensor(db)).labels == (label,)
        if act == "relu":
            assert idlg_label(dw).labels == (label,)


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        yin_labels(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        idlg_label(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="bias_grad"):
        idlg_label(np.ones((3, 2)), np.ones(4))
