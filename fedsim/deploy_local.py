"""A whole deployment on this host, for tests and benchmarks: a SuperLink and `nodes` SuperNodes
started with `fedsim-deploy` on free 127.0.0.1 ports, each in its own process group, all killed
on exit whatever happened.

with LocalDeployment(tmp_dir) as deployment:
    result = deployment.run("fl.clients=2", "fl.rounds=3")   # a CompletedProcess
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["LocalDeployment", "deploy_command", "free_port"]

START_TIMEOUT = 120.0  # seconds for the SuperLink and SuperNodes to be up (loaded 2-core host)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_command(*args: str) -> list[str]:
    """`fedsim-deploy ARGS` by absolute path (or `python -m fedsim.deploy` without the script)."""
    script = Path(sys.executable).parent / "fedsim-deploy"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "fedsim.deploy"]
    return [*base, *args]


class LocalDeployment:
    """`nodes` SuperNodes for partitions 0..nodes-1 (warm: fedsim's ClientApp inside each
    SuperNode's process; `cold`: Flower's own per-message processes), TLS when `certificates`
    (a `fedsim-deploy certificates` directory) is given. `env`: the processes' environment
    (default: this one, with FLWR_HOME in `tmp`). Each node trains with its share of this host's
    cores (`--threads`: cores // nodes, at least 1). The SuperLink listens on `link_host` and the
    SuperNodes and runs reach it at `connect_host`; `client_prefix` goes before their commands
    (e.g. `ip netns exec NS`: another network, as another machine would be). Logs go to
    `tmp/<name>.log` (superlink, node0, node1, ...)."""

    def __init__(
        self,
        tmp: str | Path,
        nodes: int = 2,
        certificates: str | Path | None = None,
        cold: bool = False,
        env: dict[str, str] | None = None,
        link_host: str = "127.0.0.1",
        connect_host: str = "127.0.0.1",
        client_prefix: Sequence[str] = (),
    ) -> None:
        self.tmp, self.nodes, self.cold = Path(tmp), nodes, cold
        self.link_host, self.client_prefix = link_host, list(client_prefix)
        self.threads = max(1, (os.cpu_count() or 1) // nodes)
        self.certs = Path(certificates) if certificates else None
        self.env = dict(env if env is not None else os.environ)
        self.env.setdefault("FLWR_HOME", str(self.tmp / "flwr_home"))
        self.env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        self.env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        self.port = free_port()
        self.address = f"{connect_host}:{self.port}"
        self.outputs = self.tmp / "outputs"
        self.procs: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, *args: str, prefix: Sequence[str] = ()) -> None:
        with (self.tmp / f"{name}.log").open("w") as log:
            self.procs[name] = subprocess.Popen(
                [*prefix, *deploy_command(*args)], stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.tmp, start_new_session=True,
            )  # fmt: skip

    def log(self, name: str) -> str:
        """What process `name` (superlink, node0, ...) has printed so far."""
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def _tls(self) -> list[str]:
        return ["--root-certificates", str(self.certs / "ca.pem")] if self.certs else []

    def __enter__(self) -> LocalDeployment:
        self.tmp.mkdir(parents=True, exist_ok=True)
        try:
            link = ["superlink", "--host", self.link_host, "--port", str(self.port)]
            link += ["--outputs", str(self.outputs)]
            link += ["--certificates", str(self.certs)] if self.certs else []
            self._start("superlink", *link)
            for i in range(self.nodes):
                node = ["supernode", "--superlink", self.address, "--partition-id", str(i)]
                node += ["--num-partitions", str(self.nodes), "--port", str(free_port())]
                node += ["--threads", str(self.threads)]
                node += [*self._tls(), *(["--cold"] if self.cold else [])]
                self._start(f"node{i}", *node, prefix=self.client_prefix)
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        """A node is ready once it has its node id from the SuperLink (a warm node imports torch
        and fedsim before it connects)."""
        ready = "SuperNode ID"
        deadline = time.monotonic() + START_TIMEOUT
        for i in range(self.nodes):
            while ready not in self.log(f"node{i}"):
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited:\n{self.log(name)[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"node{i} not ready:\n{self.log(f'node{i}')[-3000:]}")
                time.sleep(0.5)

    def kill(self, name: str) -> None:
        """SIGKILL process `name` and everything it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(10)

    def __exit__(self, *exc) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def run_command(self, *overrides: str) -> list[str]:
        """The `fedsim-deploy run` command for these Hydra overrides."""
        run = deploy_command("run", "--superlink", self.address, *self._tls(), *overrides)
        return [*self.client_prefix, *run]

    def run(self, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run fedsim on this deployment; its exit code, stdout and stderr."""
        return subprocess.run(
            self.run_command(*overrides), capture_output=True, text=True, env=self.env,
            cwd=self.tmp, timeout=timeout,
        )  # fmt: skip
