"""Unit tests of the foundation's small parts: partitions, audit records, defenses, logs, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.labelset import LabelSet
from attacks.metrics import count_l1, label_set_scores
from defenses.graddrop import GradDrop
from defenses.signsgd import SignSGD
from fedcore import Truth
from fedsim.audit import decode_truth, encode_truth
from fedsim.config import ConfigError, compose_config
from fedsim.data.partition import partition_indices
from fedsim.logs import RoundLog, load
from fedsim.models import model_builder
from fedsim.training import soft_targets


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(20, 300),
    k=st.integers(1, 10),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    alpha=st.floats(0.05, 10),
    seed=st.integers(0, 1000),
)
def test_partitions_are_disjoint_complete_nonempty_and_seeded(n, k, scheme, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, 10, n)
    parts = partition_indices(labels, k, scheme, alpha, seed)
    flat = np.concatenate(parts)
    assert len(parts) == k and all(len(p) for p in parts)
    assert sorted(flat.tolist()) == list(range(n))
    again = partition_indices(labels, k, scheme, alpha, seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_skews_labels():
    labels = np.repeat(np.arange(10), 100)
    parts = partition_indices(labels, 5, "dirichlet", alpha=0.05, seed=0)
    dominant = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(dominant) > 0.5  # strongly non-IID


def test_partition_errors():
    with pytest.raises(ValueError, match="unknown partition scheme"):
        partition_indices(np.zeros(10, int), 2, "zipf")
    with pytest.raises(ValueError, match="num_partitions"):
        partition_indices(np.zeros(10, int), 11)


def test_audit_round_trip():
    truth = Truth(
        labels=np.array([[1, 2], [3, 3]]),
        soft_labels=np.random.rand(2, 2, 10).astype(np.float32),
        tokens=(((5, 6, 7), (8,)), ((9, 9),)),
        inputs=np.random.rand(2, 2, 1, 4, 4),
    )
    back = decode_truth(encode_truth(truth))
    assert np.array_equal(back.labels, truth.labels)
    assert np.array_equal(back.soft_labels, truth.soft_labels)
    assert np.array_equal(back.inputs, truth.inputs)
    assert back.tokens == truth.tokens and back.features is None
    assert back.label_set == (5, 6, 7, 8, 9) and back.label_counts == {5: 1, 6: 1, 7: 1, 8: 1, 9: 2}


def test_signsgd_sends_lr_times_sign():
    update = {"w": torch.tensor([[0.3, -2.0], [0.0, 1e-9]])}
    out = SignSGD()(update, {"lr": 0.05})
    assert torch.equal(out["w"], torch.tensor([[0.05, -0.05], [0.0, 0.05]]))
    assert torch.equal(SignSGD(scale=2.0)(update, {"lr": 0.05})["w"][0], torch.tensor([2.0, -2.0]))
    with pytest.raises(ValueError, match="scale must be > 0"):
        SignSGD(scale=0)


@settings(max_examples=25, deadline=None)
@given(
    rate=st.floats(0, 0.99), seed=st.integers(0, 100), scope=st.sampled_from(["tensor", "global"])
)
def test_graddrop_zeroes_exactly_the_smallest(rate, seed, scope):
    g = torch.Generator().manual_seed(seed)
    update = {"a": torch.randn(7, 5, generator=g), "b": torch.randn(11, generator=g) * 10}
    out = GradDrop(rate, scope)(update, {})
    if scope == "tensor":
        for k, v in update.items():
            kept = out[k] != 0
            assert int((~kept).sum()) == int(np.floor(rate * v.numel()))
            if kept.any() and (~kept).any():
                assert v[kept].abs().min() >= v[~kept].abs().max()
            assert torch.equal(out[k][kept], v[kept])
    else:
        allv = torch.cat([v.flatten() for v in update.values()])
        allo = torch.cat([v.flatten() for v in out.values()])
        assert int((allo == 0).sum()) == int(np.floor(rate * allv.numel()))


def test_graddrop_rejects_bad_options():
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        GradDrop(1.0)
    with pytest.raises(ValueError, match="scope"):
        GradDrop(0.5, "layer")


def test_label_metrics_and_labelset_score():
    assert label_set_scores([1, 2], [2, 3]) == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "exact": 0.0,
    }
    assert label_set_scores([], [])["exact"] == 1.0
    assert label_set_scores([], [1])["f1"] == 0.0
    assert count_l1({1: 2, 2: 1}, {1: 1, 3: 1}) == 3.0
    truth = Truth(labels=np.array([[4, 4, 7]]))
    scores = LabelSet(labels=(4, 7), num_labels=2, counts={4: 2, 7: 1}).score(truth)
    assert scores["exact"] == 1.0 and scores["length_error"] == 1.0 and scores["count_l1"] == 0.0


def test_soft_targets_sum_to_one_and_mix():
    y, p = torch.tensor([0, 1]), torch.tensor([2, 1])
    t = soft_targets(y, 4, smoothing=0.1, partner_labels=p, mix_weight=torch.tensor([0.7, 0.5]))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.allclose(t[0], torch.tensor([0.7 * 0.9 + 0.025, 0.025, 0.3 * 0.9 + 0.025, 0.025]))


IMAGE_MODELS = ["efficientnet_b0", "lenet", "mlp", "resnet18"]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_end_in_the_named_linear_layer(name):
    """Each image model's YAML builds (by its `_target_`) a net whose `last_layer` is a Linear."""
    node = compose_config([f"model={name}"])["model"]
    assert node["task"] == "image"
    built_name, build = model_builder(node, "image")
    model = build(num_classes=10)
    assert built_name == name
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert isinstance(model.get_submodule(model.last_layer), torch.nn.Linear)
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        compose_config(["model=vgg"])
    with pytest.raises(ValueError, match="is for task=image, not task=asr"):
        model_builder(node, "asr")


def test_round_log_flushes_atomically(tmp_path):
    log = RoundLog(tmp_path, context={"defense": "none"})
    log.add("attacks", round=1, client=0, attack="x", status="ok", f1=1.0)
    log.add("rounds", round=1, accuracy=0.5)
    log.flush()
    logs = load(tmp_path)
    assert logs.attacks.loc[0, "defense"] == "none" and logs.rounds.loc[0, "accuracy"] == 0.5
    assert logs.clients.empty and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no round logs"):
        load(tmp_path / "..")


def test_compose_config_validates():
    cfg = compose_config(["fl.rounds=2", "defense=graddrop", "attack=[yin]"])
    assert (
        cfg["fl"]["rounds"] == 2
        and cfg["defense"]["rate"] == 0.9
        and list(cfg["attack"]) == ["yin"]
    )
    with pytest.raises(ConfigError, match=r"fl\.batch_size"):
        compose_config(["fl.batch_size=0"])
    with pytest.raises(ConfigError, match="Available attack options"):
        compose_config(["attack=[rlg,nope]"])


def test_missing_data_names_the_install_command(monkeypatch, tmp_path):
    from fedsim.data.fashion_mnist import MissingDataError, check_fashion_mnist
    from fedsim.factory import build_task

    monkeypatch.setenv("FEDSIM_FASHION_MNIST", str(tmp_path))
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist"):
        check_fashion_mnist()
    node = {"_target_": "fedsim.tasks.image.ImageTask", "data_root": str(tmp_path)}
    with pytest.raises(MissingDataError, match="FEDSIM_FASHION_MNIST"):
        build_task({"task": node})


def test_device_auto_picks_the_gpu_when_present(monkeypatch):
    from fedsim.factory import resolve_device
    from fedsim.simulation import _ray_backend_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    cfg = {"device": "auto", "backend": {"num_cpus": 4, "client_cpus": 1, "client_gpus": None}}
    assert _ray_backend_config(cfg)["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto").type == "cuda"
    config = _ray_backend_config(cfg)
    assert config["client_resources"] == {"num_cpus": 1, "num_gpus": 0.25}
    assert config["init_args"]["num_gpus"] == 1
