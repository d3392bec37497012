"""The rlg / yin / idlg plugins on a real tiny torch model, with a ServerView built by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from attacks.label_attacks import IDLGAttack, RLGAttack, YinAttack
from fedcore import ModelSpec, ServerView, Truth

NUM_CLASSES, IN_DIM, HIDDEN = 40, 12, 24


def build(act: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), act(), nn.Linear(HIDDEN, NUM_CLASSES))


def client_round(act, batch_size, local_steps, lr=0.1, seed=1):
    """K plain SGD steps of mean cross-entropy; returns the server's view and the truth."""
    model = build(act)
    spec = ModelSpec(
        task="image",
        name="tiny",
        num_classes=NUM_CLASSES,
        last_weight="2.weight",
        last_bias="2.bias",
        build=lambda: build(act),
        input_shape=(IN_DIM,),
    )
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (local_steps, batch_size), generator=gen)
    labels[:, 0] = labels[0, 0]  # a label repeated across steps
    xs = [torch.randn(batch_size, IN_DIM, generator=gen) for _ in range(local_steps)]
    losses = [
        lambda m, x=x, y=y: nn.functional.cross_entropy(m(x), y)
        for x, y in zip(xs, labels, strict=True)
    ]
    view = ServerView.from_local_steps(model, losses, spec, lr, batch_size=batch_size)
    return view, Truth(labels=labels.numpy())


@pytest.mark.parametrize("act", [nn.SiLU, nn.ReLU, nn.Tanh])
@pytest.mark.parametrize("known_count", [False, True])
def test_rlg_plugin_exact(act, known_count):
    view, truth = client_round(act, batch_size=4, local_steps=2)
    finding = RLGAttack(known_count=known_count)(view, {})
    assert finding.ok, finding.message
    scores = finding.score(truth)
    assert scores["exact"] == 1.0 and scores["f1"] == 1.0
    assert scores["length_error"] == 0.0 and scores["count_l1"] == 0.0


def test_rlg_plugin_without_bias_counts():
    view, truth = client_round(nn.SiLU, batch_size=4, local_steps=2)
    finding = RLGAttack(use_bias=False)(view, {})
    assert finding.score(truth)["exact"] == 1.0
    assert finding.counts is None  # a repeated label and no bias: counts not identifiable
    assert "not identifiable" in finding.diagnostics["counts"]


def test_rlg_plugin_adds_the_labels_the_protocol_guarantees():
    """`protocol_labels` (speech: eos) is added when RLG does not find it; counts are dropped."""
    view, _ = client_round(nn.SiLU, batch_size=4, local_steps=2)
    plain = RLGAttack(protocol_labels=False)(view, {})
    absent = next(c for c in range(NUM_CLASSES) if c not in plain.labels)
    present = plain.labels[0]
    known = replace(view, model=replace(view.model, protocol_labels=(absent,)))
    found = RLGAttack()(known, {})
    assert set(found.labels) == {*plain.labels, absent} and found.counts is None
    assert found.diagnostics["added_known"] == [absent]
    assert RLGAttack(protocol_labels=False)(known, {}).labels == plain.labels
    same = replace(view, model=replace(view.model, protocol_labels=(present,)))
    for unchanged in (same, view):  # already found; images: nothing is guaranteed
        found = RLGAttack()(unchanged, {})
        assert (found.labels, found.counts) == (plain.labels, plain.counts)
        assert "added_known" not in found.diagnostics


def test_rlg_plugin_bounds_s_by_the_longest_target():
    """Speech: S <= N * K * max_labels_per_sample; a larger rank is reported, not tested."""
    view, truth = client_round(nn.SiLU, batch_size=4, local_steps=2)  # S = 8
    speech = replace(view, model=replace(view.model, max_labels_per_sample=1))
    assert RLGAttack()(speech, {}).score(truth)["exact"] == 1.0  # bound 8: within
    small = replace(speech, train_config={**view.train_config, "batch_size": 1})
    found = RLGAttack()(small, {})  # bound 2 < rank 8
    assert found.status == "not_applicable" and "max_labels = 2" in found.message
    assert RLGAttack(max_labels=None)(small, {}).ok  # an explicit option wins


def test_rlg_plugin_not_applicable_when_batch_too_large():
    view, truth = client_round(nn.ReLU, batch_size=30, local_steps=1)  # S = 30 > d = 24
    finding = RLGAttack()(view, {})
    assert finding.status == "not_applicable" and finding.score(truth) == {}


def test_yin_plugin_relu_vs_silu():
    view, truth = client_round(nn.ReLU, batch_size=3, local_steps=1)
    relu = YinAttack()(view, {}).score(truth)
    assert relu["precision"] == 1.0  # non-negative features: no false positives
    view, truth = client_round(nn.SiLU, batch_size=3, local_steps=1)
    silu = YinAttack()(view, {}).score(truth)
    assert silu["recall"] == 1.0 and silu["precision"] < 0.5  # signed features break the rule
    top = YinAttack(known_count=True)(view, {})
    assert top.num_labels == 3 and len(top.labels) == 3


@pytest.mark.parametrize("act", [nn.SiLU, nn.ReLU])
def test_idlg_plugin_single_sample(act):
    for seed in range(3):
        view, truth = client_round(act, batch_size=1, local_steps=1, seed=seed)
        assert IDLGAttack().check(view.model, view.train_config) is None
        assert IDLGAttack()(view, {}).score(truth)["exact"] == 1.0


def test_idlg_plugin_check_refuses_batches():
    view, _ = client_round(nn.ReLU, batch_size=2, local_steps=1)
    reason = IDLGAttack().check(view.model, dict(view.train_config))
    assert reason and "batch_size 1" in reason
    assert IDLGAttack()(view, {}).status == "not_applicable"


def test_plugins_names_and_hydra_configs():
    from pathlib import Path

    import yaml

    conf = Path(__file__).resolve().parents[1] / "fedsim" / "conf" / "attack"
    for cls, name in ((RLGAttack, "rlg"), (YinAttack, "yin"), (IDLGAttack, "idlg")):
        assert cls.name == name
        text = (conf / f"{name}.yaml").read_text()
        assert text.startswith(f"# @package attack.{name}\n")
        options = yaml.safe_load(text)
        target = options.pop("_target_")
        assert target == f"attacks.label_attacks.{cls.__name__}"
        cls(**options)  # every option is a valid keyword
