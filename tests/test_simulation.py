"""End-to-end runs of the simulation on the in-process grid (and one on Ray)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcore import ServerView, Truth
from fedsim.logs import load
from fedsim.tasks.base import TrainConfig
from tests import plugins

ROOT = Path(__file__).resolve().parents[1]
RECORDER = "+attack.recorder._target_=tests.plugins.Recorder"


def test_observer_sees_after_minus_before(run_fedsim):
    plugins.SEEN.clear()
    logs = run_fedsim(RECORDER, "fl.rounds=2", "fl.local_steps=2", "fl.batch_size=4")
    assert len(plugins.SEEN) == 4  # 2 rounds x 2 clients
    assert set(logs.attacks["status"]) == {"ok"}
    from fedsim.factory import build_task

    for view in plugins.SEEN:
        # Replay the client's training independently and compare with what the server saw.
        task = build_task({"task": _task_node(view)})
        model = view.global_module().train()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        config = TrainConfig.from_record({**view.train_config, "round": view.round})
        task.local_train(model, view.client_id, 2, config, torch.device("cpu"))
        for name, after in model.state_dict().items():
            torch.testing.assert_close(view.update[name], after - before[name], rtol=0, atol=1e-7)
        assert view.num_examples == 8 and view.local_steps == 2 and view.batch_size == 4


def _task_node(view: ServerView) -> dict:
    return {
        "_target_": "fedsim.tasks.image.ImageTask",
        "_recursive_": False,
        "model": {"_target_": "fedsim.models.image.MLP", "hidden": [32], "task": "image"},
        "eval_samples": 200,
    }


def test_signsgd_and_graddrop_as_seen_by_the_server(run_fedsim):
    plugins.SEEN.clear()
    run_fedsim(RECORDER, "defense=signsgd", "defense.scale=null", "fl.lr=0.05", name="sign")
    for view in plugins.SEEN:
        for name, u in view.update.items():
            nonzero = u[u != 0].abs()
            assert torch.allclose(nonzero, torch.full_like(nonzero, 0.05), rtol=1e-4), name
    plugins.SEEN.clear()
    run_fedsim(RECORDER, "defense=graddrop", "defense.rate=0.9", name="drop")
    for view in plugins.SEEN:
        w, b = view.last_layer_update()
        assert (w == 0).float().mean() >= 0.9 - 1e-6
        assert int((b != 0).sum()) <= 1  # 10 entries, keep floor-complement 1


def test_attacks_cannot_reach_the_truth(run_fedsim):
    """The view holds no Truth and no audit bytes, and the strategy never sees the audit record."""
    plugins.SEEN.clear()
    plugins.FINDINGS.clear()
    run_fedsim("attack=[rlg]", RECORDER, "fl.keep_inputs=true")
    assert plugins.SEEN
    for view, findings in zip(plugins.SEEN, plugins.FINDINGS, strict=True):
        found = _reachable(view) + _reachable(findings)
        assert not any(isinstance(o, Truth) for o in found)
        assert not any(isinstance(o, bytes | bytearray) for o in found)
        assert {f.name for f in dataclasses.fields(ServerView)} == {
            "round", "client_id", "global_model", "update", "train_config", "num_examples", "model",
            "num_clients",
        }  # fmt: skip
        assert "audit" not in view.train_config or view.train_config["audit"] in (True, False)
        # What else an attack is given: the findings of the attacks listed before it.
        assert list(findings) == ["rlg"] and type(findings["rlg"]).__name__ == "LabelSet"


def _reachable(root, limit: int = 100_000) -> list:
    """Every object reachable from `root` through attributes, mappings, sequences, closures."""
    seen, stack, out = set(), [root], []
    while stack and len(out) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(
            obj, str | int | float | bool | type(None) | torch.Tensor | type
        ):
            continue
        seen.add(id(obj))
        out.append(obj)
        if isinstance(obj, dict) or (hasattr(obj, "items") and callable(obj.items)):
            try:
                for k, v in obj.items():
                    stack += [k, v]
            except TypeError:
                pass
        elif isinstance(obj, list | tuple | set | frozenset):
            stack += list(obj)
        if dataclasses.is_dataclass(obj):
            stack += [getattr(obj, f.name) for f in dataclasses.fields(obj)]
        for attr in ("func", "args", "keywords", "__closure__"):
            value = getattr(obj, attr, None)
            is_func = attr == "func" and value is not None
            if (value is not None and not callable(value)) or is_func:
                stack.append(value if attr != "__closure__" else [c.cell_contents for c in value])
    return out


def test_failing_client_and_failing_attack(run_fedsim):
    logs = run_fedsim(
        "defense=none",
        "defense._target_=tests.plugins.FailOnClient",
        "+attack.raising._target_=tests.plugins.Raising",
        "+attack.sleeping._target_=tests.plugins.Sleeping",
        "+attack.sleeping.seconds=3",
        "attack_timeout=0.5",
        RECORDER,
        "fl.clients=3",
        "fl.rounds=2",
    )
    clients = logs.clients
    failed = clients[clients["status"] == "error"]
    assert (
        sorted(failed["client"]) == [1, 1]
        and failed["message"].str.contains("crashed on purpose").all()
    )
    assert (clients[clients["client"] != 1]["status"] == "ok").all()
    assert list(logs.rounds["failures"]) == [0, 1, 1]
    assert list(logs.rounds["ok"]) == [0, 2, 2]
    attacks = logs.attacks.set_index("attack")
    assert (attacks.loc["raising", "status"] == "error").all()
    assert attacks.loc["raising", "message"].str.contains("boom from the test attack").all()
    assert attacks.loc["sleeping", "message"].str.contains("timed out").all()
    assert (attacks.loc["recorder", "status"] == "ok").all()  # later attacks still run
    assert logs.rounds["accuracy"].notna().all()


def test_non_finite_update_is_flagged_and_not_aggregated(run_fedsim):
    logs = run_fedsim("defense._target_=tests.plugins.NaNOnClient", "fl.rounds=2")
    bad = logs.clients[logs.clients["status"] == "non_finite"]
    assert list(bad["client"]) == [0, 0] and bad["message"].str.contains("not aggregated").all()
    assert list(logs.rounds["non_finite"]) == [0, 1, 1]
    assert np.isfinite(logs.rounds["loss"]).all()  # the NaN never reached the global model


def test_runs_are_reproducible(run_fedsim):
    a = run_fedsim(RECORDER, "fl.rounds=2", "fl.clients=4", "fl.fraction=0.5", name="a")
    b = run_fedsim(RECORDER, "fl.rounds=2", "fl.clients=4", "fl.fraction=0.5", name="b")
    cols = ["round", "client", "num_examples", "train_loss"]
    assert a.clients[cols].equals(b.clients[cols])
    assert a.rounds[["accuracy", "loss"]].equals(b.rounds[["accuracy", "loss"]])
    assert len(a.clients) == 4  # 2 of 4 clients per round


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "fedsim.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


FAST_CLI = ["backend=inline", "model=mlp", "model.hidden=[32]", "task.eval_samples=200",
            "fl.clients=2", "device=cpu", "attack=[]"]  # fmt: skip


def test_rows_survive_a_killed_run(tmp_path):
    out = tmp_path / "killed"
    result = _cli(*FAST_CLI, "fl.rounds=5", "+attack.killer._target_=tests.plugins.KillAtRound",
                  "+attack.killer.round=3", f"output={out}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 9, result.stderr[-2000:]
    logs = load(out)
    assert list(logs.rounds["round"]) == [0, 1, 2]
    assert sorted(set(logs.clients["round"])) == [1, 2]
    assert sorted(set(logs.attacks["round"])) == [1, 2]
    assert (out / "checkpoints" / "latest.pt").exists()
    assert torch.load(out / "checkpoints" / "latest.pt")["round"] == 2


def test_cli_multirun_writes_one_run_per_defense(tmp_path):
    result = _cli(
        "-m", *FAST_CLI, "defense=none,signsgd,graddrop", "fl.rounds=2", cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("multirun/*/*/*/rounds.parquet"))
    assert len(runs) == 3
    defenses = sorted(load(r).clients["defense"].iloc[0] for r in runs)
    assert defenses == ["graddrop", "none", "signsgd"]
    assert "Run directory" in result.stdout
    # one cross-job table after the sweep: a row per job, labelled by what differs
    assert "Sweep: 3 runs" in result.stdout and "defense=GradDrop" in result.stdout


def test_a_round_with_nothing_aggregated_exits_1_and_names_the_cause(tmp_path):
    out = tmp_path / "dead"
    result = _cli(*FAST_CLI, "fl.rounds=2", "defense._target_=tests.plugins.FailOnClient",
                  "+defense.client=null", f"output={out}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    for round_ in (1, 2):
        line = f"round {round_}: 0 of 2 updates aggregated (2 errors: RuntimeError: client None"
        assert line in result.stderr, result.stderr[-2000:]
    assert list(load(out).rounds["round"]) == [0, 1, 2]  # the logs are kept


@pytest.mark.ray
def test_ray_backend_end_to_end(tmp_path):
    """The default backend: Flower's simulation engine with Ray actors."""
    out = tmp_path / "ray"
    args = [a for a in FAST_CLI if not a.startswith("backend")]
    plugin = ["+attack.sleeping._target_=tests.plugins.Sleeping", "+attack.sleeping.seconds=0"]
    result = _cli(*args, "backend=ray", "backend.num_cpus=2", "fl.rounds=2", *plugin,
                  f"output={out}", cwd=tmp_path, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    logs = load(out)
    assert list(logs.rounds["round"]) == [0, 1, 2] and list(logs.rounds["ok"]) == [0, 2, 2]
    assert len(logs.attacks) == 4 and (logs.attacks["status"] == "ok").all()
    assert "Global model per round" in result.stdout


def test_notebook_reads_and_plots_three_runs(tmp_path, run_fedsim):
    import nbformat
    from nbclient import NotebookClient

    for defense in ("none", "signsgd", "graddrop"):
        run_fedsim(f"defense={defense}", "fl.rounds=2", "attack=[yin]", name=f"sweep/{defense}")
    nb = nbformat.read(ROOT / "notebooks" / "round_logs.ipynb", as_version=4)
    env = {"FEDSIM_RUNS": str(tmp_path / "sweep"), "FEDSIM_FIGURES": str(tmp_path / "fig")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert (tmp_path / "fig" / "utility.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "leakage.png").stat().st_size > 1000
    text = "".join(
        str(o.get("text", o.get("data", "")))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "3 run(s)" in text and "signsgd" in text and "graddrop" in text


def test_module_level_apps_for_flwr_run(tmp_path):
    """`flwr run` loads fedsim.server_app:app and fedsim.client_app:app; they take Hydra overrides
    from the run config and write to `output`."""
    from flwr.app import Context, RecordDict

    from fedsim.client_app import app as client_app
    from fedsim.inline_grid import InlineGrid
    from fedsim.server_app import app as server_app

    out = tmp_path / "deployed"
    overrides = " ".join([*FAST_CLI, "attack=[yin]", "fl.rounds=1", f"output={out}"])
    run_config = {"overrides": overrides}
    grid = InlineGrid(client_app, 2, run_config=run_config)
    server_app(
        grid,
        Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config),
    )
    logs = load(out)
    assert list(logs.rounds["round"]) == [0, 1]
    # Deployment does not ask clients for ground truth: the attack runs but is not scored.
    assert (logs.attacks["status"] == "ok").all() and "f1" not in logs.attacks


def test_resume_continues_a_killed_run(tmp_path):
    out = tmp_path / "killed"
    killer = ["+attack.killer._target_=tests.plugins.KillAtRound", "+attack.killer.round=3"]
    first = _cli(*FAST_CLI, "fl.rounds=4", *killer, f"output={out}", cwd=tmp_path)
    assert first.returncode == 9
    # The killer stays in the saved config; it fires again only from round 3 on, so resume with
    # rounds=4 after lifting it is checked through a run with the same config minus the killer.
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["attack"]["killer"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    second = _cli(*FAST_CLI, "fl.rounds=4", f"resume={out}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    logs = load(out)
    assert list(logs.rounds["round"]) == [0, 1, 2, 3, 4]
    assert sorted(set(logs.clients["round"])) == [1, 2, 3, 4]
    # Same result as an uninterrupted run: rounds 3-4 continue from the round-2 checkpoint.
    straight = tmp_path / "straight"
    third = _cli(*FAST_CLI, "fl.rounds=4", f"output={straight}", cwd=tmp_path)
    assert third.returncode == 0
    a, b = load(straight).rounds, logs.rounds
    assert np.allclose(a["accuracy"], b["accuracy"]) and np.allclose(a["loss"], b["loss"])


def test_rlg_scores_in_the_round_log_and_beat_yin_on_silu_features(run_fedsim):
    """RLG on a SiLU network (Yin's rule assumes non-negative features) through the simulation."""
    logs = run_fedsim(
        "attack=[rlg,yin]", "model.activation=silu", "model.hidden=[64]",
        "fl.batch_size=3", "fl.rounds=2", "fl.clients=3",
    )  # fmt: skip
    attacks = logs.attacks
    rlg, yin = attacks[attacks["attack"] == "rlg"], attacks[attacks["attack"] == "yin"]
    assert len(rlg) == 6 and (rlg["status"] == "ok").all()
    assert rlg["recall"].mean() == 1.0 and rlg["f1"].mean() >= 0.9
    assert (rlg["length_error"] == 0).mean() >= 0.8  # S estimated from the spectrum, no oracle
    assert yin["precision"].mean() < rlg["precision"].mean()


@pytest.mark.parametrize("augment", ["fl.label_smoothing=0.1", "fl.mixup_alpha=1.0"])
def test_soft_label_and_reconstruction_scores_in_the_round_log(run_fedsim, augment):
    logs = run_fedsim(
        "attack=[soft_label,reconstruct]", "fl.batch_size=1", "fl.keep_inputs=true", augment,
        "fl.clients=2", "fl.rounds=1", name=augment.split("=")[0],
    )  # fmt: skip
    attacks = logs.attacks.set_index("attack")
    soft = attacks.loc[["soft_label"]]
    assert (soft["status"] == "ok").all(), soft["message"].tolist()
    assert (soft["success"] == 1.0).all() and (soft["kind_correct"] == 1.0).all()
    assert (soft["feature_cosine"] > 0.9999).all()
    recon = attacks.loc[["reconstruct"]]
    assert (recon["status"] == "ok").all() and (recon["psnr"] > 40).all()


def test_soft_label_is_not_applicable_for_batches(run_fedsim):
    logs = run_fedsim("attack=[soft_label]", "fl.batch_size=4", "fl.label_smoothing=0.1")
    assert (logs.attacks["status"] == "not_applicable").all()
    assert logs.attacks["message"].str.contains("batch").all()


def test_dropout_runs_are_reproducible(tmp_path):
    """Torch randomness in clients (dropout) is seeded per (seed, round, client), whatever the
    process's RNG state (Ray actors differ from run to run)."""
    from fedsim.config import compose_config
    from fedsim.simulation import run_experiment

    cfg = compose_config(["backend=inline", "model=efficientnet_b0", "model.dropout=0.5",
                          "task.eval_samples=50", "fl.clients=2", "fl.rounds=1", "attack=[]",
                          "device=cpu", "fl.batch_size=2"])  # fmt: skip
    losses = []
    for seed in (123, 456):
        torch.manual_seed(seed)
        losses.append(
            load(run_experiment(cfg, tmp_path / str(seed))).clients["train_loss"].tolist()
        )
    assert losses[0] == losses[1]


def test_inline_rounds_report_replies_while_they_run(caplog):
    """The inline backend runs clients one after another: a long round logs "k/n client
    replies" as clients finish (every `every` seconds), with or without a round timeout."""
    import logging

    from flwr.app import Message, RecordDict

    from fedsim.inline_grid import InlineGrid
    from fedsim.progress import ReplyProgress

    grid = InlineGrid(lambda message, context: Message(RecordDict(), reply_to=message), 3)
    for timeout in (None, 60.0):
        messages = [
            grid.create_message(RecordDict(), "train", node, "1") for node in grid.get_node_ids()
        ]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fedsim"):
            replies = grid.send_and_receive(
                messages, timeout=timeout, progress=ReplyProgress(2, 3, every=0.0)
            )
        assert len(replies) == 3
        lines = [r.getMessage().split(" after")[0] for r in caplog.records]
        assert lines == [f"round 2: {k}/3 client replies" for k in (1, 2, 3)]
