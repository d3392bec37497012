"""Label-count baselines LLG, iLRG, LLBG: synthetic last-layer gradients with known counts, the
plugins' applicability, and one SGD step of a random-init LeNet on a Fashion-MNIST batch."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attacks.count_attacks import ILRGAttack, LLBGAttack, LLGAttack
from attacks.ilrg import ilrg_counts
from attacks.label_counts import dummy_statistics, round_counts
from attacks.llbg import llbg_counts
from attacks.llg import llg_counts
from fedcore import ModelSpec, ServerView, Truth

ROOT = Path(__file__).resolve().parents[1]


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def mean_ce_grads(h, labels, weight, bias, smoothing=0.0):
    """Mean-loss gradients gW (C, d), gb (C,) and the softmax outputs p (n, C)."""
    n, num_classes = len(labels), weight.shape[0]
    p = softmax(h @ weight.T + bias)
    y = np.full((n, num_classes), smoothing / num_classes)
    y[np.arange(n), labels] += 1 - smoothing
    g = (p - y) / n
    return g.T @ h, g.sum(0), p


def histogram(labels, num_classes):
    return np.bincount(labels, minlength=num_classes)


def as_array(counts, num_classes):
    out = np.zeros(num_classes, dtype=np.int64)
    for c, k in counts.items():
        out[c] = k
    return out


# ------------------------------------------------------------------------------ rounding
@settings(max_examples=50)
@given(
    raw=st.lists(st.floats(-3, 20, allow_nan=False), min_size=1, max_size=12),
    total=st.integers(0, 60),
)
def test_round_counts_is_a_histogram_of_the_total(raw, total):
    counts = round_counts(raw, total)
    assert counts.dtype == np.int64 and (counts >= 0).all() and counts.sum() == total


@settings(max_examples=30)
@given(counts=st.lists(st.integers(0, 9), min_size=2, max_size=12), seed=st.integers(0, 999))
def test_round_counts_recovers_integers_under_small_noise(counts, seed):
    noise = np.random.default_rng(seed).uniform(-0.45, 0.45, len(counts))
    assert round_counts(np.array(counts) + noise, sum(counts)).tolist() == counts


# ------------------------------------------------------------------------------ LLG
@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8))
def test_llg_exact_at_uniform_softmax_and_equal_feature_sums(seed, n):
    """The paper's setting: ReLU features, an untrained model (p = 1/C), many classes."""
    rng = np.random.default_rng(seed)
    num_classes, dim = 100, 16
    labels = rng.integers(0, 6, size=n) * 7  # few classes: repeats
    h = np.abs(rng.normal(size=(n, dim)))
    h /= h.sum(1, keepdims=True)  # equal feature sums
    gw, _, _ = mean_ce_grads(h, labels, np.zeros((num_classes, dim)), np.zeros(num_classes))
    found = llg_counts(gw * 3.7, n)  # any positive scale
    assert found.ok and as_array(found.counts, num_classes).tolist() == (
        histogram(labels, num_classes).tolist()
    )
    assert found.labels == tuple(sorted(set(labels.tolist()))) and found.num_labels == n


@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40))
def test_llg_plus_exact_with_known_impact_and_offsets(seed, n):
    """With the true impact -s/N and offsets s * p_c, `r - offset = n_c * m`: exact even for
    N > C and a model that prefers some classes."""
    rng = np.random.default_rng(seed)
    num_classes, dim, s = 10, 8, 2.5
    labels = rng.integers(0, num_classes, size=n)
    h = np.abs(rng.normal(size=(n, dim)))
    h *= s / h.sum(1, keepdims=True)
    bias = rng.normal(scale=1.5, size=num_classes)
    gw, _, p = mean_ce_grads(h, labels, np.zeros((num_classes, dim)), bias)
    found = llg_counts(gw, n, impact=-s / n, offset=s * p[0], variant="llg_plus")
    assert as_array(found.counts, num_classes).tolist() == histogram(labels, num_classes).tolist()


def test_llg_bad_input_and_no_negative_row():
    with pytest.raises(ValueError, match="total"):
        llg_counts(np.ones((3, 2)), 0)
    with pytest.raises(ValueError, match="NaN"):
        llg_counts(np.full((3, 2), np.nan), 2)
    assert llg_counts(np.ones((3, 2)), 2).status == "not_applicable"
    assert llg_counts(-np.ones((3, 2)), 2, impact=0.5).status == "not_applicable"


# ------------------------------------------------------------------------------ iLRG
@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), smoothing=st.sampled_from([0, 0.1]))
def test_ilrg_exact_when_the_samples_share_one_embedding(seed, n, smoothing):
    """Shared features make every class embedding gW[c] / gb[c] exact, for a confident model."""
    rng = np.random.default_rng(seed)
    num_classes, dim = 10, 6
    labels = rng.integers(0, num_classes, size=n)
    h = np.repeat(rng.normal(size=(1, dim)), n, axis=0)
    weight, bias = rng.normal(size=(num_classes, dim)), rng.normal(size=num_classes)
    gw, gb, _ = mean_ce_grads(h, labels, weight, bias, smoothing)
    found = ilrg_counts(gw, gb, weight, bias, n, n, smoothing=smoothing, bias_floor=0.0)
    assert as_array(found.counts, num_classes).tolist() == histogram(labels, num_classes).tolist()
    assert found.diagnostics["residual"] < 1e-6


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 30))
def test_ilrg_exact_for_an_untrained_biased_model(seed, n):
    """Distinct features, a small weight (softmax ~ softmax(b)) and a strong bias b: iLRG reads
    b through the global model, where LLBG's uniform prior cannot."""
    rng = np.random.default_rng(seed)
    num_classes, dim = 10, 32
    labels = rng.integers(0, num_classes, size=n)
    h = np.maximum(rng.normal(size=(n, dim)), 0)
    weight = rng.normal(scale=0.01, size=(num_classes, dim))
    bias = rng.normal(scale=1.0, size=num_classes)
    gw, gb, _ = mean_ce_grads(h, labels, weight, bias)
    found = ilrg_counts(gw, gb, weight, bias, n, n)
    assert as_array(found.counts, num_classes).tolist() == histogram(labels, num_classes).tolist()


def test_ilrg_zero_bias_and_shapes():
    assert ilrg_counts(np.ones((3, 2)), np.zeros(3), np.ones((3, 2)), np.zeros(3), 2, 2).status == (
        "not_applicable"
    )
    with pytest.raises(ValueError, match="bias_grad"):
        ilrg_counts(np.ones((3, 2)), np.ones(4), np.ones((3, 2)), np.zeros(3), 2, 2)


# ------------------------------------------------------------------------------ LLBG
@settings(max_examples=30)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), steps=st.integers(1, 3))
def test_llbg_exact_with_the_true_mean_softmax(seed, n, steps):
    """n = total * pbar - N * gb, exactly, also for K steps summed (each divided by N)."""
    rng = np.random.default_rng(seed)
    num_classes, dim = 10, 8
    weight, bias = rng.normal(size=(num_classes, dim)), rng.normal(size=num_classes)
    gb_sum, p_sum, all_labels = 0, 0, []
    for _ in range(steps):
        labels = rng.integers(0, num_classes, size=n)
        _, gb, p = mean_ce_grads(rng.normal(size=(n, dim)), labels, weight, bias)
        gb_sum, p_sum = gb_sum + gb, p_sum + p.sum(0)
        all_labels.append(labels)
    truth = histogram(np.concatenate(all_labels), num_classes)
    found = llbg_counts(gb_sum, n * steps, n, p_sum / (n * steps), prior="exact")
    assert as_array(found.counts, num_classes).tolist() == truth.tolist()
    assert found.diagnostics["rounding_gap"] < 1e-9


def test_llbg_uniform_prior_exact_at_uniform_softmax_not_with_a_biased_model():
    rng = np.random.default_rng(3)
    num_classes, dim, n = 10, 8, 20
    labels = rng.integers(0, num_classes, size=n)
    h = rng.normal(size=(n, dim))
    _, gb, _ = mean_ce_grads(h, labels, np.zeros((num_classes, dim)), np.zeros(num_classes))
    truth = histogram(labels, num_classes).tolist()
    assert as_array(llbg_counts(gb, n, n).counts, num_classes).tolist() == truth
    bias = np.linspace(-2, 2, num_classes)
    _, gb, _ = mean_ce_grads(h, labels, np.zeros((num_classes, dim)), bias)
    assert as_array(llbg_counts(gb, n, n).counts, num_classes).tolist() != truth
    assert llbg_counts(np.zeros(4), 2, 2).status == "not_applicable"


# ------------------------------------------------------------------------------ plugins
def lenet_spec(**changes) -> ModelSpec:
    from fedsim.models.image import LeNet

    fields = dict(
        task="image",
        name="lenet",
        num_classes=10,
        last_weight="fc3.weight",
        last_bias="fc3.bias",
        build=lambda: LeNet(10),
        input_shape=(1, 28, 28),
    )
    return ModelSpec(**{**fields, **changes})


CONFIG = {"lr": 0.1, "batch_size": 4, "local_steps": 1}


@pytest.mark.parametrize(
    ("attack", "spec", "config", "reason"),
    [
        (ILRGAttack(), {"last_bias": None}, {}, "bias"),
        (LLBGAttack(), {"last_bias": None}, {}, "bias"),
        (LLGAttack(), {"task": "asr"}, {}, "speech"),
        (LLGAttack("llg_star"), {"input_shape": None}, {}, "input_shape"),
        (LLBGAttack("dummy"), {"input_shape": None}, {}, "input_shape"),
        (ILRGAttack(), {}, {"mixup_alpha": 0.4}, "mixup"),
        (LLBGAttack(), {}, {"lr": None}, "lr"),
    ],
)
def test_plugins_say_why_they_do_not_apply(attack, spec, config, reason):
    assert reason in attack.check(lenet_spec(**spec), {**CONFIG, **config})
    assert LLGAttack().check(lenet_spec(last_bias=None), CONFIG) is None  # LLG needs no bias


def test_bad_options():
    with pytest.raises(ValueError, match="variant"):
        LLGAttack("llg2")
    with pytest.raises(ValueError, match="prior"):
        LLBGAttack("zero")


@pytest.mark.parametrize("name", ["llg", "ilrg", "llbg"])
def test_configs_build_their_plugin(name):
    node = yaml.safe_load((ROOT / "fedsim" / "conf" / "attack" / f"{name}.yaml").read_text())
    module, cls = node.pop("_target_").rsplit(".", 1)
    assert getattr(import_module(module), cls)(**node).name == name


def test_dummy_statistics_are_averages_of_a_forward_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    stats = dummy_statistics(model, "3", (6,), samples=64, batch_size=16)
    assert stats.samples == 64 and stats.feature_sum > 0
    assert np.isclose(stats.mean_prob.sum(), 1.0) and stats.offset.shape == (3,)
    assert np.isclose(stats.offset.sum(), stats.feature_sum)  # sum_c p_c = 1


def fashion_view(seed: int = 0, batch=(3, 3, 7, 0)):
    """One SGD step of a random-init LeNet on a Fashion-MNIST batch with the given labels."""
    from fedsim.data.fashion_mnist import load_fashion_mnist
    from fedsim.models.image import LeNet
    from fedsim.tasks.image import MEAN, STD

    data = load_fashion_mnist("train")
    rng = np.random.default_rng(seed)
    picks = [int(rng.choice(np.flatnonzero(data.labels == c))) for c in batch]
    x = (torch.from_numpy(data.images[picks]).float() / 255 - MEAN) / STD
    y = torch.from_numpy(data.labels[picks])
    torch.manual_seed(seed)
    model = LeNet(10)
    loss = lambda m: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    view = ServerView.from_local_steps(model, [loss], lenet_spec(), lr=0.1, batch_size=len(batch))
    return view, Truth(labels=y.numpy()[None])


@pytest.mark.parametrize(
    "attack",
    [LLGAttack(), LLGAttack("llg_star"), ILRGAttack(), LLBGAttack(), LLBGAttack("dummy")],
    ids=["llg", "llg_star", "ilrg", "llbg", "llbg_dummy"],
)
def test_plugins_count_a_real_lenet_batch(attack):
    view, truth = fashion_view()
    found = attack(view, {})
    assert found.ok, found.message
    scores = found.score(truth)
    assert scores["count_l1"] == 0.0 and scores["exact"] == 1.0
    assert dict(found.counts) == {0: 1, 3: 2, 7: 1} and scores["length_error"] == 0.0


def test_llg_plus_runs_on_a_real_lenet_batch():
    """LLG+'s offsets come from Gaussian dummy inputs, not Fashion-MNIST-like ones: it runs and
    returns a histogram of N, but is not exact here (README, Results)."""
    view, truth = fashion_view()
    found = LLGAttack("llg_plus")(view, {})
    assert found.ok and sum(found.counts.values()) == 4
    assert found.score(truth)["length_error"] == 0.0


def test_two_local_steps_read_as_n_times_k_samples():
    """K = 2 steps of the whole LeNet: iLRG and LLBG count the 2 * 3 samples of both steps."""
    from fedsim.data.fashion_mnist import load_fashion_mnist
    from fedsim.models.image import LeNet
    from fedsim.tasks.image import MEAN, STD

    data = load_fashion_mnist("train")
    steps = [(2, 2, 5), (5, 9, 2)]
    rng = np.random.default_rng(1)
    losses = []
    for batch in steps:
        picks = [int(rng.choice(np.flatnonzero(data.labels == c))) for c in batch]
        x = (torch.from_numpy(data.images[picks]).float() / 255 - MEAN) / STD
        y = torch.from_numpy(data.labels[picks])
        losses.append(lambda m, x=x, y=y: nn.functional.cross_entropy(m(x), y))
    torch.manual_seed(1)
    view = ServerView.from_local_steps(LeNet(10), losses, lenet_spec(), lr=0.1, batch_size=3)
    assert view.total_samples == 6
    for attack in (ILRGAttack(), LLBGAttack()):
        assert dict(attack(view, {}).counts) == {2: 3, 5: 2, 9: 1}
