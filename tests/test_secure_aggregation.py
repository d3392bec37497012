"""Secure aggregation (`defense=secagg`, Flower's SecAgg+): the observer attacks only the round's
aggregate, which equals plain FedAvg's up to SecAgg+'s quantisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from defenses.secagg import SecAggPlus
from fedcore import AGGREGATE, Truth
from fedsim.tasks.base import TrainConfig
from tests import plugins
from tests.test_simulation import _reachable

RECORDER = "+attack.recorder._target_=tests.plugins.Recorder"
SECAGG = ["defense=secagg", "fl.clients=3", "fl.batch_size=2", "keep_checkpoints=true"]
STEP = SecAggPlus().quantization_step  # one quantisation step with the default parameters
TOL = STEP + 1e-7  # a step (3.8e-6) plus float32 rounding of weights ~0.1


def _checkpoints(run_dir: Path) -> dict[int, dict[str, torch.Tensor]]:
    files = sorted((run_dir / "checkpoints").glob("round_*.pt"))
    return {int(f.stem.split("_")[1]): torch.load(f, weights_only=False)["model"] for f in files}


def _client_updates(run_dir: Path, view) -> list[dict[str, torch.Tensor]]:
    """Every sampled client's own update in the view's round, replayed from the global model."""
    from fedsim.factory import build_task

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    task, clients = build_task(cfg), int(cfg["fl"]["clients"])
    config = TrainConfig.from_record({**view.train_config, "round": view.round})
    updates = []
    for pid in range(clients):
        model = view.global_module().train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        task.local_train(model, pid, clients, config, torch.device("cpu"))
        updates.append({k: v - before[k] for k, v in model.state_dict().items()})
    return updates


def _max_diff(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_attacks_see_only_the_aggregate(run_fedsim, tmp_path):
    plugins.SEEN.clear()
    logs = run_fedsim(*SECAGG, "fl.rounds=2", "attack=[rlg]", RECORDER, name="secagg")
    run_dir = tmp_path / "secagg"
    # (a) the run completes, accuracy per round, one row per attack and round, all on the sum
    assert list(logs.rounds["round"]) == [0, 1, 2] and logs.rounds["accuracy"].notna().all()
    assert list(logs.rounds["ok"])[1:] == [3, 3]
    assert set(logs.attacks["client"]) == {AGGREGATE}
    assert sorted(zip(logs.attacks["round"], logs.attacks["attack"], strict=True)) == [
        (1, "recorder"), (1, "rlg"), (2, "recorder"), (2, "rlg")
    ]  # fmt: skip
    assert (logs.clients["status"] == "ok").all() and len(logs.clients) == 6
    assert (logs.clients["defense"] == "secagg").all()
    # RLG on the sum: the union of the round's labels (S = 3 clients x N 2 = 6 < 10 classes)
    rlg = logs.attacks[logs.attacks["attack"] == "rlg"]
    assert (rlg["status"] == "ok").all() and (rlg["recall"] == 1.0).all()

    # (b) no individual update reaches an attack: each view holds new global - old global ...
    globals_ = _checkpoints(run_dir)
    assert [v.round for v in plugins.SEEN] == [1, 2]
    for view in plugins.SEEN:
        assert view.client_id == AGGREGATE and view.num_clients == 3
        reachable = _reachable(view)  # no truth, no audit bytes
        assert not any(isinstance(o, Truth | bytes | bytearray) for o in reachable)
        assert view.num_examples == 6 and view.total_samples == 6
        new_minus_old = {
            k: globals_[view.round][k] - globals_[view.round - 1][k] for k in view.update
        }
        assert _max_diff(dict(view.update), new_minus_old) < 1e-7
        # ... which is the clients' mean update up to quantisation, and none of their updates
        updates = _client_updates(run_dir, view)
        mean = {k: torch.stack([u[k] for u in updates]).mean(0) for k in view.update}
        assert _max_diff(dict(view.update), mean) <= TOL
        for update in updates:
            assert _max_diff(dict(view.update), update) > 100 * STEP


def test_the_aggregate_equals_plain_fedavg(run_fedsim, tmp_path):
    run_fedsim(*SECAGG, "fl.rounds=1", name="secagg")
    run_fedsim(*SECAGG[1:], "defense=none", "fl.rounds=1", name="plain")
    secure, plain = _checkpoints(tmp_path / "secagg"), _checkpoints(tmp_path / "plain")
    assert _max_diff(secure[0], plain[0]) == 0.0  # same seed, same initial model
    moved = _max_diff(plain[1], plain[0])
    assert moved > 100 * STEP  # the round changed the model far beyond the quantisation
    assert _max_diff(secure[1], plain[1]) <= TOL


def test_secagg_needs_two_clients_per_round(run_fedsim):
    with pytest.raises(Exception, match="at least 2 clients"):
        run_fedsim("defense=secagg", "fl.clients=1")


def test_truth_of_an_aggregate_is_the_union():
    a = Truth(labels=np.array([[1, 2]]), soft_labels=np.zeros((1, 2, 4)))
    b = Truth(labels=np.array([[2, 3]]))
    both = Truth.concatenate([a, b])
    assert both.labels.shape == (1, 4) and both.label_set == (1, 2, 3)
    assert both.label_counts == {1: 1, 2: 2, 3: 1} and both.soft_labels is None
    speech = Truth.concatenate(
        [Truth(np.zeros((1, 0)), tokens=(((5, 6),),)), Truth(np.zeros((1, 0)), tokens=(((7,),),))]
    )
    assert speech.tokens == (((5, 6), (7,)),) and speech.label_set == (5, 6, 7)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_shares": 2}, {"num_shares": 3, "reconstruction_threshold": 3},
     {"clipping_range": 0}, {"modulus_range": 3000}, {"quantization_range": 2**32},
     {"num_shares": 1.5}],
)  # fmt: skip
def test_secagg_parameters_are_checked(kwargs):
    with pytest.raises(ValueError, match="SecAgg"):
        SecAggPlus(**kwargs)


def test_secagg_defense_is_the_identity():
    update = {"w": torch.randn(3, 2)}
    assert SecAggPlus()(update, {}) is update and SecAggPlus.secure_aggregation is True


def test_a_client_that_fails_drops_out_of_the_sum(run_fedsim, monkeypatch):
    """SecAgg+ removes the masks of a client that fails mid-round; the sum is of the others."""
    from fedsim.tasks.image import ImageTask

    train = ImageTask.local_train

    def failing(self, model, partition_id, *args, **kwargs):
        if partition_id == 1:
            raise RuntimeError("client 1 crashed on purpose")
        return train(self, model, partition_id, *args, **kwargs)

    monkeypatch.setattr(ImageTask, "local_train", failing)
    plugins.SEEN.clear()
    logs = run_fedsim(*SECAGG, "fl.rounds=1", RECORDER)
    assert list(logs.rounds["ok"]) == [0, 2] and list(logs.rounds["failures"]) == [0, 1]
    failed = logs.clients[logs.clients["status"] == "error"]
    assert list(failed["client"]) == [1] and failed["message"].str.contains("on purpose").all()
    assert len(logs.attacks) == 1 and logs.attacks["status"].iloc[0] == "ok"
    (view,) = plugins.SEEN
    assert view.num_clients == 2 and view.num_examples == 4
