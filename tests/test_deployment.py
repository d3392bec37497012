"""Flower's deployment engine for real: a SuperLink and two SuperNodes on 127.0.0.1 as processes
(`fedsim-deploy`), fedsim submitted with `fedsim-deploy run`, the round logs checked (scored with
`audit=true`). Insecure, with TLS (certificates made here), with a SuperNode killed mid-round,
and a failing ServerApp (nonzero exit); and, as root, the SuperNodes and the run on a second
network (a network namespace) with TLS. The processes run without the venv on PATH (the
`flower-superexec` fix) and each SuperNode has its own Runtime API port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from fedsim.deploy_local import LocalDeployment
from fedsim.logs import load

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
# Small and fast: a tiny MLP, 200 test images, 2 clients; RLG scored against the clients' truth.
FAST = ["model=mlp", "model.hidden=[32]", "task.eval_samples=200", "fl.clients=2", "device=cpu",
        "attack=[rlg]", "audit=true"]  # fmt: skip
RUN_TIMEOUT = 240  # seconds for one `fedsim-deploy run`


def _env(home: Path) -> dict[str, str]:
    """No venv on PATH (Flower must still find its helper commands), a private FLWR_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/bin:/bin"
    env["FLWR_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)  # tests.plugins for the killed-SuperNode case
    return env


def _deployment(tmp: Path, certificates: Path | None = None) -> LocalDeployment:
    return LocalDeployment(tmp, 2, certificates, env=_env(tmp / "flwr_home"))


def _check_scored_rounds(run_dir: Path, rounds: int) -> None:
    logs = load(run_dir)
    assert list(logs.rounds["round"]) == list(range(rounds + 1))
    assert len(logs.clients) == 2 * rounds and (logs.clients["status"] == "ok").all()
    rlg = logs.attacks[logs.attacks["attack"] == "rlg"]
    assert len(rlg) == 2 * rounds and (rlg["status"] == "ok").all()
    assert rlg["f1"].notna().all() and rlg["f1"].mean() > 0.9  # scored: the clients' truth came
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints" / "latest.pt").exists()


@pytest.fixture(scope="module")
def insecure(tmp_path_factory):
    with _deployment(tmp_path_factory.mktemp("insecure")) as deployment:
        yield deployment


def test_insecure_run_logs_scored_rounds_prints_its_directory_and_resumes(insecure, tmp_path):
    result = insecure.run(*FAST, "fl.rounds=2")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # Without output= the run lands in the SuperLink's --outputs, and its path is printed.
    (run_dir,) = insecure.outputs.iterdir()
    assert f"[fedsim] run directory: {run_dir}" in result.stdout
    assert "[fedsim] round 2/2" in result.stdout  # fedsim's round lines reach the stream
    # Each SuperNode trains in its own process with its share of the host's cores.
    assert f"in this process, {insecure.threads} torch thread" in insecure.log("node0")
    _check_scored_rounds(run_dir, 2)
    # A deployed run resumes like any other: `fedsim resume=<dir> fl.rounds=3` (here in-process,
    # as `fedsim.cli` does it) continues from the config.yaml and checkpoint in its directory.
    from fedsim.config import compose_config
    from fedsim.simulation import check_resume, run_experiment

    overrides = [f"resume={run_dir}", "fl.rounds=3", "backend=inline"]
    cfg = compose_config(overrides)
    run_experiment(cfg, run_dir, resume_changes=check_resume(cfg, overrides))
    assert list(load(run_dir).rounds["round"]) == [0, 1, 2, 3]


def test_a_failing_serverapp_fails_the_command(insecure, tmp_path):
    result = insecure.run(*FAST, "fl.rounds=1", "fl.lr=abc", f"output={tmp_path / 'bad'}")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "[fedsim] config error:" in result.stdout and "fl.lr" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr  # the one line says it all
    assert "finished:failed" in result.stderr
    assert not (tmp_path / "bad").exists()  # nothing written for a config error


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A deployment with TLS between the SuperNodes and `flwr` and the SuperLink, certificates
    (a CA, and a SuperLink certificate for 127.0.0.1 and localhost) made here."""
    from fedsim.deploy_certs import make_certificates

    tmp = tmp_path_factory.mktemp("tls")
    make_certificates(tmp / "certs", ["127.0.0.1", "localhost"])
    with _deployment(tmp, certificates=tmp / "certs") as deployment:
        yield deployment


def test_tls_deployment(tls, tmp_path):
    result = tls.run(*FAST, "fl.rounds=2", f"output={tmp_path / 'run'}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    config = (tls.tmp / "flwr_home" / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config
    _check_scored_rounds(tmp_path / "run", 2)


def test_a_supernode_killed_mid_round(tls, tmp_path):
    """(Last: it kills a node of the TLS deployment.) Client 1 trains, then its defense sleeps;
    its SuperNode (the ClientApp runs in it) is SIGKILLed while it sleeps. The round ends at
    `round_timeout` with a `timeout` row naming client 1, the run goes on to round 2 (client 1
    again gone, or no longer sampled) and ends cleanly with every row kept."""
    out = tmp_path / "run"
    slow = ["defense._target_=tests.plugins.SleepOnClient", "+defense.client=1",
            "+defense.seconds=60", "round_timeout=8"]  # fmt: skip
    seen = len(tls.log("node1"))  # the log of earlier runs on this deployment
    proc = subprocess.Popen(
        tls.run_command(*FAST, "fl.rounds=2", *slow, f"output={out}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=tls.env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while "Receiving: train message" not in tls.log("node1")[seen:]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(1.0)  # training done, the defense sleeping: mid-round
        tls.kill("node1")
        stdout, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-4000:]
    logs = load(out)
    assert list(logs.rounds["round"]) == [0, 1, 2]
    clients = logs.clients.set_index(["round", "client"])["status"].to_dict()
    # Round 2 samples client 1 again while the SuperLink still counts its node (about a minute).
    assert clients.pop((2, 1), "timeout") == "timeout"
    assert clients == {(1, 0): "ok", (1, 1): "timeout", (2, 0): "ok"}
    rlg = logs.attacks[logs.attacks["attack"] == "rlg"]
    assert sorted(rlg["client"]) == [0, 0] and rlg["f1"].notna().all()
    assert np.isfinite(logs.rounds["accuracy"]).all()


@pytest.fixture
def other_network():
    """A Linux network namespace joined to this one by a veth pair: its own interfaces and
    loopback, as another machine on the LAN has. Yields (this side's address, namespace name).
    Needs root and iproute2; skipped otherwise."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if os.geteuid() != 0 or not Path(ip).exists():
        pytest.skip("needs root and iproute2 (`ip netns`) for a second network")
    tag = os.getpid() % 100_000
    ns, here, there = f"fedsim{tag}", f"fsh{tag}", f"fsn{tag}"
    subnet = f"10.213.{tag % 250}"
    steps = [
        ["netns", "add", ns],
        ["link", "add", here, "type", "veth", "peer", "name", there],
        ["link", "set", there, "netns", ns],
        ["addr", "add", f"{subnet}.1/24", "dev", here],
        ["link", "set", here, "up"],
        ["-n", ns, "addr", "add", f"{subnet}.2/24", "dev", there],
        ["-n", ns, "link", "set", there, "up"],
        ["-n", ns, "link", "set", "lo", "up"],
    ]
    try:
        for step in steps:
            done = subprocess.run([ip, *step], capture_output=True, text=True, check=False)
            if done.returncode:
                pytest.skip(f"cannot make a second network: ip {' '.join(step)}: {done.stderr}")
        yield f"{subnet}.1", [ip, "netns", "exec", ns]
    finally:
        subprocess.run([ip, "link", "del", here], capture_output=True, check=False)
        subprocess.run([ip, "netns", "del", ns], capture_output=True, check=False)


def test_several_machines_with_tls(other_network, tmp_path):
    """The README's commands for several machines: the SuperLink on 0.0.0.0 here, with a
    certificate made for this side's network address only; the SuperNodes and `fedsim-deploy
    run` on the other network, reaching it at that address. (Its own SuperExec reaches it over
    127.0.0.1: `fedsim-deploy certificates` names the loopback too, or every run stays pending.)"""
    from fedsim.deploy_certs import make_certificates

    address, in_other_network = other_network
    make_certificates(tmp_path / "certs", [address])
    env = _env(tmp_path / "flwr_home")
    with LocalDeployment(
        tmp_path, 2, tmp_path / "certs", env=env, link_host="0.0.0.0", connect_host=address,
        client_prefix=in_other_network,
    ) as deployment:  # fmt: skip
        result = deployment.run(*FAST, "fl.rounds=2", f"output={tmp_path / 'run'}")
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert f"{address.rsplit('.', 1)[0]}.2" in deployment.log("superlink")  # from there
    _check_scored_rounds(tmp_path / "run", 2)


def test_certificates_name_the_loopback_too(tmp_path):
    from cryptography import x509

    from fedsim.deploy_certs import make_certificates

    paths = make_certificates(tmp_path, ["10.1.2.3", "node.example"])
    cert = x509.load_pem_x509_certificate(paths["certfile"].read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in names] == ["10.1.2.3", "node.example", "127.0.0.1", "localhost"]


def test_feedback_lines_name_the_device_and_count_replies(caplog):
    """Item 9's lines: the device at start, and k/n replies every `every` seconds of a round."""
    import logging

    import torch

    from fedsim.progress import ReplyProgress, device_line

    assert device_line(torch.device("cpu")).startswith("device: CPU, ")
    progress = ReplyProgress(round_=3, expected=16, every=0.0)
    with caplog.at_level(logging.INFO, logger="fedsim"):
        progress.update(5)
        ReplyProgress(round_=4, expected=16, every=3600.0).update(7)  # a short round: silent
    assert [r.getMessage().split(" after")[0] for r in caplog.records] == [
        "round 3: 5/16 client replies"
    ]


def _content(model_bytes: int = 0):
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    state = {"w": torch.randn(3, 4), "steps": torch.tensor(7), "h": torch.ones(2).half()}
    if model_bytes:
        state["big"] = torch.randn(model_bytes // 4)
    config = ConfigRecord({"round": 3, "lr": 0.1, "blob": b"\x00\x01", "ids": [1, 2]})
    records = {"config": config, "arrays": ArrayRecord(state), "metrics": MetricRecord({"m": 0.5})}
    return state, RecordDict(records)


@pytest.mark.parametrize("model_bytes", [0, 5 << 20])
def test_packing_keeps_every_record_exactly(model_bytes):
    """The deployed apps send a content as one record of two byte strings
    (`fedsim.deploy_packing`): a small one as a ConfigRecord (3 objects per message), a large one
    as two byte Arrays; records, their order, names, dtypes, shapes and values come back."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord

    from fedsim.deploy_packing import INLINE_BYTES, PACKED, pack_content, unpack_content

    state, content = _content(model_bytes)
    packed = pack_content(content)
    assert list(packed.keys()) == [PACKED]
    kind = ArrayRecord if model_bytes > INLINE_BYTES else ConfigRecord
    assert isinstance(packed[PACKED], kind)
    assert unpack_content(content) is None  # a plain content passes through
    back = unpack_content(packed)
    assert list(back.keys()) == ["config", "arrays", "metrics"]
    assert dict(back["config"]) == dict(content["config"])
    assert dict(back["metrics"]) == {"m": 0.5}
    model = back["arrays"].to_torch_state_dict()
    assert list(model) == list(state)
    assert all(torch.equal(model[k], v) and model[k].dtype == v.dtype for k, v in state.items())


def test_packed_messages_share_one_model_and_keep_the_sent_content():
    """Messages to several clients may share one content: each is packed once, the shared
    content the server keeps (the observer's copy of what was sent) is not changed, and an error
    reply passes through."""
    from flwr.app import Error, Message
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.deploy_packing import is_packed, pack_message, unpack_message

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    _, content = _content()
    first, second = (Message(content, dst_node_id=n, message_type="train") for n in (5, 6))
    cache: dict = {}
    pack_message(first, cache), pack_message(second, cache), pack_message(second, cache)
    assert is_packed(first.content) and is_packed(second.content) and len(cache) == 1
    assert list(content.keys()) == ["config", "arrays", "metrics"]  # the sent content as it was
    assert unpack_message(second) and list(second.content.keys()) == list(content.keys())
    assert not unpack_message(second)  # already plain
    error = Message(Error(code=1, reason="boom"), reply_to=first)
    pack_message(error)
    assert error.has_error() and not unpack_message(error)


def test_waits_back_off_and_restart(monkeypatch):
    """The deployed processes' waits (`fedsim.flower_waits`): a backoff doubling to its cap and
    starting over; Flower's idle SuperLink wait (3 s) becomes that backoff, its waits on its own
    memory (0.5 s) become LOCAL seconds."""
    from fedsim.flower_waits import LOCAL, Backoff, ShortSleeps

    wait = Backoff(0.02, 0.1)
    assert [wait.next() for _ in range(5)] == [0.02, 0.04, 0.08, 0.1, 0.1]
    wait.reset()
    assert wait.next() == 0.02
    slept: list[float] = []
    sleeps = ShortSleeps(poll=0.1, first=0.02)
    import fedsim.flower_waits as waits

    monkeypatch.setattr(waits.time, "sleep", slept.append)
    sleeps.sleep(3), sleeps.sleep(3), sleeps.sleep(0.5), sleeps.sleep(3)
    sleeps.idle.reset()
    sleeps.sleep(3)
    monkeypatch.undo()
    assert slept == [0.02, 0.04, LOCAL, 0.08, 0.02]
    assert sleeps.monotonic() > 0  # everything else is the time module


def _node_holding_a_message(clientapp: str):
    """A SuperNode's NodeState after its loop has pulled and stored a "train" message of run 3
    (with its task) for a run whose app names `clientapp`; returns (state, message)."""
    import hashlib
    import io
    import zipfile

    from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
    from flwr.supercore.constant import TaskType
    from flwr.supercore.fab import Fab
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supernode.nodestate import NodeStateFactory
    from flwr.supernode.start_client_internal import _insert_message

    from fedsim.deploy import _APP_TOML
    from fedsim.deploy_clientapp import FEDSIM_CLIENTAPP

    state = NodeStateFactory(ObjectStoreFactory()).state()
    state.set_node_id(7)
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as fab:
        toml = _APP_TOML.format(version="1.0.0").replace(FEDSIM_CLIENTAPP, clientapp)
        fab.writestr("pyproject.toml", toml)
    content = bundle.getvalue()
    run = Run.create_empty(3)
    run.fab_hash = state.store_fab(Fab(hashlib.sha256(content).hexdigest(), content, {}))
    state.store_run(run)
    context = Context(run_id=3, node_id=7, node_config={}, state=RecordDict(), run_config={})
    state.set_run_series_context(run.series_id, context)
    metadata = Metadata(run_id=3, message_id="", src_node_id=1, dst_node_id=7,
                        reply_to_message_id="", group_id="1", created_at=time.time(),
                        ttl=600.0, message_type="train")  # fmt: skip
    message = Message(RecordDict({"config": ConfigRecord({"x": 2})}), metadata=metadata)
    _insert_message(message, state, state.object_store)
    state.create_task(task_type=TaskType.CLIENT_APP, run_id=3, fab_hash=run.fab_hash)
    return state, message


def test_the_supernode_answers_a_stored_message_in_its_own_process(monkeypatch):
    """The warm SuperNode's loop runs the task on its NodeState: the ClientApp gets the message
    as sent and the node's context, the task's heartbeat is acknowledged while it trains, its
    reply is stored for the loop to push (timed, as Flower times a ClientApp process), the
    context it changed is kept, the task is finished, and nothing is left to run."""
    import flwr.supercore.heartbeat as heartbeat
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.constant import Status, SubStatus

    import fedsim.client_app
    from fedsim.deploy_clientapp import FEDSIM_CLIENTAPP, run_pending_tasks

    def app(message, context):
        time.sleep(0.3)  # training
        context.state["seen"] = ConfigRecord({"rounds": 1})
        x = message.content["config"]["x"]
        return Message(RecordDict({"config": ConfigRecord({"y": x * 10})}), reply_to=message)

    monkeypatch.setattr(fedsim.client_app, "app", app)
    # Flower's heartbeat sender, every (interval - call timeout) * ~0.8 s: here ~0.04 s.
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", 0.1)
    monkeypatch.setattr(heartbeat, "HEARTBEAT_CALL_TIMEOUT", 0.05)
    state, sent = _node_holding_a_message(FEDSIM_CLIENTAPP)
    beats, acknowledge = [], state.acknowledge_task_heartbeat

    def counted(task_id: int) -> bool:
        beats.append(acknowledge(task_id))
        return beats[-1]

    state.acknowledge_task_heartbeat = counted
    assert run_pending_tasks(state) == ["ok"]
    assert len(beats) >= 3 and all(beats)  # each one extended the running task's claim
    (reply,) = state.get_messages_legacy(is_reply=True)
    assert reply.metadata.reply_to_message_id == sent.metadata.message_id
    assert state.get_message_processing_duration(sent.metadata.message_id) >= 0.0
    tree = state.object_store.get_object_tree(reply.metadata.message_id)
    assert tree.object_id == reply.metadata.message_id  # the loop pushes it from the store
    (task,) = state.get_tasks()
    assert (task.status.status, task.status.sub_status) == (Status.FINISHED, SubStatus.COMPLETED)
    assert state.get_run_series_context(0).state["seen"]["rounds"] == 1
    assert run_pending_tasks(state) == []


def test_the_supernode_replies_with_an_error_naming_the_fix():
    """A run whose ClientApp is not fedsim's gets an error reply saying to use `--cold`, and
    its task is finished as failed; the SuperNode goes on."""
    from flwr.common.constant import Status, SubStatus

    from fedsim.deploy_clientapp import run_pending_tasks

    state, _ = _node_holding_a_message("other_project.client:app")
    assert run_pending_tasks(state) == ["failed"]
    (reply,) = state.get_messages_legacy(is_reply=True)
    assert reply.has_error() and "--cold" in reply.error.reason
    assert reply.error.reason.startswith("RuntimeError: this SuperNode runs only")
    (task,) = state.get_tasks()
    assert (task.status.status, task.status.sub_status) == (Status.FINISHED, SubStatus.FAILED)
