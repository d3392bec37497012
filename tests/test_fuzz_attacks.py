"""Fuzzing the attacks' entry points (issue 14, item 8): `reveal_labels`, `recover_soft_label` and
`reconstruct_transcript` with random shapes, dtypes, zeros, NaN/Inf, huge (1e30, 1e300) and tiny
(1e-30, 1e-300) scales, rank-deficient and non-cross-entropy matrices.

Each call must return a finding (`ok`, or `not_applicable` with a reason) or raise one
`ValueError` with a message, within `CALL_SECONDS` (a call runs in a thread; a hang fails the
test instead of blocking it). Anything else (an overflow, a linear-algebra error, an exception
from deep inside the math) is a bug: the fix goes into `attacks/input_checks.py`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from attacks.rlg import reveal_labels
from attacks.soft_label import recover_soft_label
from attacks.transcript import (
    MATCHED,
    OUTPUT,
    TranscriptOptions,
    parameter_names,
    reconstruct_transcript,
)
from fedcore import Finding
from fedsim.asr.model import LAS_DECODER
from tests.test_transcript import EOS, MODEL, gradients

CALL_SECONDS = 10.0  # a call slower than this counts as a hang (calls here take < 0.5 s)
SCALES = (1.0, 1e30, 1e-30, 1e300, 1e-300, 1e8, 1e-8)
SCALED = st.sampled_from((1.0,) * 4 + SCALES)  # ordinary scales more often
DTYPES = ("float16", "float32", "float64", "int32", "int64")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _bounded(fn) -> tuple[Any, BaseException | None, float]:
    """(result, exception, seconds) of `fn()` run in a daemon thread; fails on a hang."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with np.errstate(all="ignore"):  # overflow in casts and searches is expected here
                box["value"] = fn()
        except BaseException as exc:  # judged by the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(CALL_SECONDS)
    assert not thread.is_alive(), f"the call ran past {CALL_SECONDS} s"
    return box.get("value"), box.get("error"), time.perf_counter() - start


def _assert_clean(fn) -> Finding | None:
    """The call returns a finding (ok, or not_applicable with a reason) or raises one
    ValueError with a message."""
    value, error, _ = _bounded(fn)
    if error is not None:
        assert isinstance(error, ValueError), f"{type(error).__name__}: {error}"
        assert str(error).strip(), "a ValueError without a message"
        event(f"ValueError: {str(error)[:45]}")
        return None
    assert isinstance(value, Finding), type(value)
    assert value.status in ("ok", "not_applicable"), value.status
    event(value.status)
    if value.status == "not_applicable":
        assert value.message.strip()
    return value


def _cast(x: np.ndarray, dtype: str, as_torch: bool):
    if dtype.startswith("int"):
        x = np.nan_to_num(x, nan=0.0, posinf=1e9, neginf=-1e9).clip(-1e9, 1e9)
    with np.errstate(all="ignore"):  # 1e30 as float16 is inf: intended
        y = x.astype(dtype)
    return torch.from_numpy(y) if as_torch else y


def _base(kind: str, c: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """A (c, d) matrix: a softmax cross-entropy gradient of 1-3 samples, or one that is not."""
    if kind.startswith("ce"):
        s = int(kind[2:])
        h = np.abs(rng.normal(size=(s, d)))  # ReLU features
        z = rng.normal(size=(s, c))
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        y = np.eye(c)[rng.integers(0, c, s)]
        return (p - y).T @ h / s
    if kind == "rank1":  # rank one, rows not summing to zero
        return np.outer(rng.normal(size=c), rng.normal(size=d))
    if kind == "rank_deficient":
        r = max(1, min(c, d) // 2)
        return rng.normal(size=(c, r)) @ rng.normal(size=(r, d))
    if kind == "constant":
        return np.ones((c, d))
    if kind == "zeros":
        return np.zeros((c, d))
    return rng.normal(size=(c, d))


KINDS = ("ce1", "ce3", "random", "rank1", "rank_deficient", "constant", "zeros")


@st.composite
def matrices(draw, kinds: tuple[str, ...] = KINDS) -> tuple[np.ndarray, dict]:
    """A float64 matrix (or, sometimes, a 1-D or 3-D array) before its dtype cast, and how it
    was made. The odds (a NaN/Inf entry in 1 of 5, a non-2-D array in 1 of 10) come from a
    seeded generator: Hypothesis's own choices favour the edge cases far more often."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = int(rng.choice([1, 2, 3, 5, 8, 10, 12], p=[0.04, 0.16, 0.16, 0.16, 0.16, 0.16, 0.16]))
    d = int(rng.choice([1, 2, 4, 8, 12, 30]))
    kind = draw(st.sampled_from(kinds))
    x = _base(kind, c, d, rng) * draw(SCALED)
    if rng.random() < 0.2:
        x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
    if rng.random() < 0.1:
        x = x.ravel() if rng.random() < 0.5 else x[None]
    return x, {"kind": kind, "c": c, "d": d}


@settings(max_examples=200)
@given(
    data=matrices(),
    dtype=st.sampled_from(("float32", "float64", *DTYPES)),
    as_torch=st.booleans(),
    num_labels=st.sampled_from([None, 1, 2, 0, 3, 7, None]),
    bias=st.sampled_from(["none", "sum", "wrong_length", "nan", "sum", "none"]),
    method=st.sampled_from(["fast", "lp", "fast"]),
)
def test_reveal_labels_answers_or_refuses_cleanly(data, dtype, as_torch, num_labels, bias, method):
    x, _ = data
    w = _cast(x, dtype, as_torch)
    bias_update = None
    if bias != "none" and x.ndim == 2:
        b = x.sum(1) if bias == "sum" else np.ones(x.shape[0] + 1)
        if bias == "nan":
            b = np.full(x.shape[0], np.nan)
        bias_update = b
    found = _assert_clean(lambda: reveal_labels(w, num_labels, bias_update=bias_update,
                                                method=method))  # fmt: skip
    if found is not None and found.ok:
        labels = found.labels
        assert all(0 <= label < x.shape[0] for label in labels)


@settings(max_examples=200)
@given(
    data=matrices(("ce1",) * 5 + KINDS),
    dtype=st.sampled_from(("float32", "float64", *DTYPES)),
    as_torch=st.booleans(),
    weight_scale=SCALED,
    bias=st.sampled_from(["none", "zeros", "wrong_length", "random", "zeros"]),
    bias_grad=st.sampled_from(["none", "row_sum", "nan", "zeros", "none"]),
    kind=st.sampled_from(["auto", "hard", "smoothing", "mixup"]),
    mismatched=st.sampled_from([False, False, True, False, False]),
)
def test_recover_soft_label_answers_or_refuses_cleanly(
    data, dtype, as_torch, weight_scale, bias, bias_grad, kind, mismatched
):
    x, _ = data
    g = _cast(x, dtype, as_torch)
    rng = np.random.default_rng(0)
    shape = x.shape if not mismatched else (x.shape[0] + 1, *x.shape[1:])
    weight = rng.normal(size=shape) * weight_scale
    c = x.shape[0] if x.ndim == 2 else 1
    b = {"none": None, "zeros": np.zeros(c), "random": rng.normal(size=c),
         "wrong_length": np.zeros(c + 2)}[bias]  # fmt: skip
    gb = None
    if bias_grad != "none" and x.ndim == 2:
        gb = {"row_sum": x.sum(1), "zeros": np.zeros(c), "nan": np.full(c, np.nan)}[bias_grad]
    found = _assert_clean(lambda: recover_soft_label(g, weight, b, gb, kind))
    if found is not None and found.ok:
        assert found.label.shape == (c,)


@settings(max_examples=100)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=SCALED,
    weight_scale=SCALED,
    dtype=st.sampled_from(("float32", "float64", "float16")),
    with_bias=st.booleans(),
    with_bias_grad=st.booleans(),
)
def test_recover_soft_label_on_one_sample_gradients_at_any_scale(
    seed, scale, weight_scale, dtype, with_bias, with_bias_grad
):
    """Well-formed single-sample gradients (the root search's own input) at every scale."""
    rng = np.random.default_rng(seed)
    c, d = int(rng.integers(2, 11)), int(rng.integers(1, 16))
    g = _base("ce1", c, d, rng) * scale
    with np.errstate(all="ignore"):
        weight = (rng.normal(size=(c, d)) * weight_scale).astype(dtype)
    bias = rng.normal(size=c) if with_bias else None
    bias_grad = g.sum(1) / max(d, 1) if with_bias and with_bias_grad else None
    found = _assert_clean(lambda: recover_soft_label(g.astype(dtype), weight, bias, bias_grad))
    if found is not None and found.ok:
        assert found.label.shape == (c,)


def test_the_soft_label_overflow_found_by_fuzzing_is_a_value_error():
    """A rank-one, zero-row-sum gradient at 1e300 overflowed a Python float in the root search."""
    rng = np.random.default_rng(0)
    g = _base("ce1", 2, 8, rng) * 1e300
    with pytest.raises(ValueError, match="weight_grad has entries up to"):
        recover_soft_label(g, rng.normal(size=(2, 8)))


# --- transcript reconstruction on a tiny LAS -------------------------------------------------

_GRADS: dict[str, torch.Tensor] = {}


def _las_and_grads():
    if not _GRADS:
        _GRADS.update(gradients(MODEL, [28, 30, 6, 30, 36, EOS]))
    return MODEL, dict(_GRADS), LAS_DECODER


BAGS = ((3, 6, 28, 30, 36), None, (3,), (), (-1, 3), (99,), (3, 3, 3), (3, 6, 28, 30, 36))
MUTATIONS = ("none", "nan", "inf", "zeros", "wrong_shape", "missing", "extra_dim", "scalar", "int")


def _mutate(grads: dict, name: str, how: str, scale: float, dtype: torch.dtype) -> dict:
    g = {k: v * scale for k, v in grads.items()}
    if how == "nan":
        g[name] = g[name].clone().view(-1).index_fill(0, torch.tensor([0]), float("nan"))
        g[name] = g[name].view(grads[name].shape)
    elif how == "inf":
        g[name] = torch.full_like(g[name], float("inf"))
    elif how == "zeros":
        g = {k: torch.zeros_like(v) for k, v in g.items()}
    elif how == "wrong_shape":
        g[name] = g[name][..., :-1]
    elif how == "missing":
        del g[name]
    elif how == "extra_dim":
        g[name] = g[name][None]
    elif how == "scalar":
        g[name] = torch.tensor(1.0)
    if how == "int":
        return {k: v.clamp(-1e9, 1e9).round().to(torch.int64) for k, v in g.items()}
    return {k: v.to(dtype) for k, v in g.items()}


@settings(max_examples=60)
@given(
    how=st.sampled_from(("none",) * 3 + MUTATIONS),
    role=st.sampled_from(MATCHED),
    scale=SCALED,
    dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
    length=st.sampled_from([6, 1, 2, 0, 17, 40, 6]),
    bow=st.sampled_from(BAGS),
    init=st.sampled_from(["random", "span"]),
    match=st.sampled_from([OUTPUT, MATCHED]),
    init_state=st.sampled_from(["zero", "optimise"]),
    search_dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_reconstruct_transcript_answers_or_refuses_cleanly(
    how, role, scale, dtype, length, bow, init, match, init_state, search_dtype
):
    model, grads, decoder = _las_and_grads()
    name = parameter_names(decoder)[role]
    fuzzed = _mutate(grads, name, how, scale, dtype)
    options = TranscriptOptions(
        restarts=2, steps=5, patience=5, init=init, match=match, init_state=init_state,
        dtype=search_dtype, device="cpu",
    )  # fmt: skip
    bag = None if bow is None else list(bow)
    found = _assert_clean(lambda: reconstruct_transcript(model, fuzzed, bag, length, decoder,
                                                         options))  # fmt: skip
    if found is not None:
        assert len(found.tokens) == length
        assert np.isfinite(found.distance)


@pytest.mark.parametrize("how, scale", [("nan", 1.0), ("none", 1e30), ("wrong_shape", 1.0)])
def test_the_transcript_failures_found_by_fuzzing_are_value_errors(how, scale):
    """NaN gradients and a squared norm that overflows float32 ended in an AttributeError (no
    best restart), a wrong shape in a matmul RuntimeError."""
    model, grads, decoder = _las_and_grads()
    fuzzed = _mutate(grads, "output.weight", how, scale, torch.float32)
    options = TranscriptOptions(restarts=1, steps=5, device="cpu")
    with pytest.raises(ValueError, match=r"decoder_grads\['output.weight'\]"):
        reconstruct_transcript(model, fuzzed, [3, 6, 28], 6, decoder, options)
