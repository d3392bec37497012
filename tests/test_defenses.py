"""The update defenses on synthetic updates whose answer is known: DP, top-k, QSGD, the budget."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.dp import GaussianDP, clip_update
from defenses.graddrop import GradDrop
from defenses.privacy_budget import gaussian_epsilon
from defenses.qsgd import QSGD, quantise
from defenses.topk import TopK

shapes = st.lists(st.integers(1, 40), min_size=1, max_size=4)


def _update(sizes: list[int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}


def _norm(update: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().square().sum()) for v in update.values()))


@settings(max_examples=40)
@given(shapes, st.integers(0, 10**6), st.floats(0.01, 10.0))
def test_clip_bounds_the_norm_and_keeps_direction(sizes, seed, clip):
    update = _update(sizes, seed)
    clipped, norm = clip_update(update, clip)
    assert norm == pytest.approx(_norm(update))
    assert _norm(clipped) <= clip * (1 + 1e-6)
    scale = min(1.0, clip / norm)
    for k in update:
        torch.testing.assert_close(clipped[k], update[k] * scale)


def test_dp_noise_has_the_configured_std_and_reports_epsilon():
    torch.manual_seed(0)
    update = {"w": torch.zeros(200_000), "b": torch.full((10,), 5.0)}  # norm 15.8 -> clipped
    dp, state = GaussianDP(clip=2.0, noise=0.5, delta=1e-5), {}
    sent = dp(update, state)
    assert float(sent["w"].std()) == pytest.approx(1.0, rel=0.01)  # sigma * C = 1
    assert float(sent["w"].mean()) == pytest.approx(0.0, abs=0.01)
    metrics = dp.metrics(state)
    assert metrics["dp_clipped"] == 1.0 and metrics["dp_norm"] == pytest.approx(math.sqrt(250))
    assert metrics["dp_epsilon"] == pytest.approx(gaussian_epsilon(0.5, 1, 1e-5))
    dp(update, state)
    assert dp.metrics(state)["dp_releases"] == 2.0
    assert dp.metrics(state)["dp_epsilon"] > metrics["dp_epsilon"]


def test_dp_clip_only_is_deterministic_and_infinite_epsilon():
    update = {"w": torch.tensor([3.0, 4.0])}
    dp, state = GaussianDP(clip=1.0, noise=0.0), {}
    torch.testing.assert_close(dp(update, state)["w"], torch.tensor([0.6, 0.8]))
    assert dp.metrics(state)["dp_epsilon"] == math.inf


def test_epsilon_grows_with_releases_and_shrinks_with_noise():
    eps = [gaussian_epsilon(1.0, r, 1e-5) for r in (1, 4, 16)]
    assert eps == sorted(eps) and eps[0] > 0
    assert gaussian_epsilon(4.0, 16, 1e-5) < gaussian_epsilon(1.0, 16, 1e-5)
    # one Gaussian release at sigma = 1, delta = 1e-5: the exact (analytic) epsilon is ~4.4;
    # the RDP bound is a little looser but must stay close
    assert 4.3 < gaussian_epsilon(1.0, 1, 1e-5) < 5.0
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip": 0}, "clip"),
        ({"noise": -1}, "noise"),
        ({"delta": 1}, "delta"),
    ],
)
def test_dp_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianDP(**kwargs)


@settings(max_examples=40)
@given(shapes, st.integers(0, 10**6), st.sampled_from([0.01, 0.1, 0.5, 0.99, 1, 3, 1000]))
def test_topk_keeps_exactly_the_largest(sizes, seed, k):
    update = _update(sizes, seed)
    for scope in ("tensor", "global"):
        sent = TopK(k, scope)(update, {})
        groups = [[n] for n in update] if scope == "tensor" else [list(update)]
        for names in groups:
            values = torch.cat([update[n] for n in names])
            kept = torch.cat([sent[n] for n in names])
            n = values.numel()
            want = min(n, int(k)) if k >= 1 else max(1, math.ceil(k * n))
            assert int((kept != 0).sum()) == want
            # every kept entry is unchanged and at least as large as every dropped one
            on = kept != 0
            assert torch.equal(kept[on], values[on])
            if (~on).any():
                assert values[on].abs().min() >= values[~on].abs().max()


def test_topk_fraction_sends_what_graddrop_of_the_complement_sends():
    update = _update([50, 7, 300], 3)
    for scope in ("tensor", "global"):
        a, b = TopK(0.1, scope)(update, {}), GradDrop(0.9, scope)(update, {})
        assert all(torch.equal(a[k], b[k]) for k in update)


@pytest.mark.parametrize("k", [0, -0.5, 1.5, True])
def test_topk_rejects_bad_k(k):
    with pytest.raises(ValueError, match="top-k k must be"):
        TopK(k)


@settings(max_examples=30)
@given(st.integers(1, 50), st.integers(1, 16), st.integers(0, 10**6))
def test_qsgd_values_lie_on_the_level_grid(n, levels, seed):
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q = quantise(v, levels, torch.Generator().manual_seed(seed + 1))
    norm = float(torch.linalg.vector_norm(v))
    steps = q.abs() / norm * levels
    assert torch.allclose(steps, steps.round(), atol=1e-9)
    assert (steps.round() <= levels).all()
    assert ((q == 0) | (torch.sign(q) == torch.sign(v))).all()


def test_qsgd_is_unbiased_and_levels_reduce_variance():
    v = torch.tensor([0.3, -1.2, 0.05, 2.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = {s: torch.stack([quantise(v, s, g) for _ in range(20_000)]) for s in (1, 8)}
    for d in draws.values():
        torch.testing.assert_close(d.mean(0), v, atol=0.04, rtol=0)
        assert (d[:, 4] == 0).all()
    assert draws[8].var(0).sum() < draws[1].var(0).sum() / 4


def test_qsgd_plugin_keeps_keys_shapes_dtypes_and_zero():
    update = {"w": torch.randn(3, 4), "b": torch.zeros(4)}
    sent = QSGD(levels=2)(update, {})
    assert {k: (v.shape, v.dtype) for k, v in sent.items()} == {
        k: (v.shape, v.dtype) for k, v in update.items()
    }
    assert torch.equal(sent["b"], update["b"])
    with pytest.raises(ValueError, match="QSGD levels"):
        QSGD(levels=0)
