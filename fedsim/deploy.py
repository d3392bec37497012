"""`fedsim-deploy`: fedsim on Flower's deployment engine (a SuperLink, SuperNodes, `flwr run`).

fedsim-deploy superlink [--host 0.0.0.0] [--port 9092] [--outputs DIR] [--certificates DIR]
fedsim-deploy supernode --superlink HOST:9092 --partition-id I --num-partitions N [--port P]
                        [--root-certificates ca.pem] [--threads T] [--cold]
fedsim-deploy run --superlink HOST:9092 [--root-certificates ca.pem] [HYDRA OVERRIDES ...]
fedsim-deploy certificates DIR --host HOST [--host NAME ...]

What it adds to Flower's own commands:
- every Flower process it starts finds Flower's helper commands (`flower-superexec`,
  `flwr-serverapp`, `flwr-clientapp`) next to this Python, whether or not the venv is on PATH;
- each SuperNode serves its Runtime API on its own port (`--port`, default 9094 + partition id),
  so several SuperNodes share a host;
- a SuperNode runs fedsim's ClientApp inside its own process, in its loop as each message
  arrives (`fedsim.deploy_clientapp`), instead of a fresh `flwr-clientapp` process per message,
  and waits at most `--poll` seconds where Flower waits 0.5-3 s (`fedsim.flower_waits`; `--cold`:
  Flower's own per-message process and waits);
- `run` submits fedsim as a Flower app (a generated `pyproject.toml` naming fedsim's ServerApp and
  ClientApp; fedsim itself must be installed on every machine), streams its log, and exits with
  the run's outcome: 0 when the ServerApp completed, 1 when it failed (the reason is printed);
- the run directory lands in the SuperLink's `--outputs` (default `outputs/` where the SuperLink was
  started) unless `output=` is given, and the ServerApp prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["app_dir", "flower_env", "main", "write_connection"]

RUNTIME_PORT = 9094  # a SuperNode's Runtime API port is this + its partition id by default
POLL = 0.1  # seconds between a warm SuperNode's pulls while idle (Flower's own loop: 3 s)
PENDING_HINT = 60.0  # seconds after which `run` says that a run has still not started
OUTPUTS_ENV = "FEDSIM_OUTPUTS"  # the SuperLink's --outputs, read by the deployed ServerApp

_APP_TOML = """\
# Written by `fedsim-deploy run`: fedsim as a Flower app. The code is the installed fedsim package.
[project]
name = "fedsim-app"
version = "{version}"
description = "fedsim's ServerApp and ClientApp (the installed fedsim package)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedsim"

[tool.flwr.app.components]
serverapp = "fedsim.server_app:app"
clientapp = "fedsim.client_app:app"

[tool.flwr.app.config]
overrides = ""
"""


def _bin(name: str) -> str:
    """A console script of this Python's environment (the venv), by absolute path."""
    return str(Path(sys.executable).parent / name)


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this Python's `bin` first on PATH (Flower starts its helper
    commands by name), telemetry and the update check off unless set."""
    env = dict(os.environ)
    here = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([here, *(p for p in env.get("PATH", "").split(os.pathsep) if p)])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.update(extra or {})
    return env


def _flwr_home() -> Path:
    return Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()


def app_dir(home: Path | None = None) -> Path:
    """Write the Flower app that names fedsim's apps (`$FLWR_HOME/fedsim-app`); return its path."""
    from fedsim import __version__

    path = (home or _flwr_home()) / "fedsim-app"
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(_APP_TOML.format(version=__version__))
    return path


def write_connection(address: str, root_certificates: str | None, home: Path | None = None) -> str:
    """Add (or replace) the SuperLink connection `fedsim-<host>-<port>` in
    `$FLWR_HOME/config.toml`: TLS with `root_certificates` (a CA file), else insecure. Returns its
    name (`flwr ls <name>`, `flwr log <run id> <name>` use it)."""
    import tomllib

    import tomli_w

    home = home or _flwr_home()
    home.mkdir(parents=True, exist_ok=True)
    name = "fedsim-" + re.sub(r"[^A-Za-z0-9]+", "-", address).strip("-")
    path = home / "config.toml"
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    entry: dict = {"address": address}
    if root_certificates:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    else:
        entry["insecure"] = True
    config.setdefault("superlink", {})[name] = entry
    path.write_text(tomli_w.dumps(config))
    return name


def _superlink(args: argparse.Namespace) -> None:
    cmd = [_bin("flower-superlink"), "--host", args.host, "--port", str(args.port)]
    cmd += ["--disable-runtime-dependency-installation"]
    if args.certificates:
        certs = Path(args.certificates)
        cmd += ["--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile"]
        cmd += [str(certs / "server.key"), "--ssl-ca-certfile", str(certs / "ca.pem")]
    else:
        cmd += ["--insecure"]
    cmd += args.flower_args
    outputs = str(Path(args.outputs).resolve())
    print(f"fedsim-deploy: SuperLink on {args.host}:{args.port}; run directories go to {outputs}")
    sys.stdout.flush()
    os.execve(cmd[0], cmd, flower_env({OUTPUTS_ENV: outputs}))


def _supernode(args: argparse.Namespace) -> None:
    port = args.port if args.port is not None else RUNTIME_PORT + args.partition_id
    node_config = f"partition-id={args.partition_id} num-partitions={args.num_partitions}"
    flower = ["--superlink", args.superlink, "--node-config", node_config, "--port", str(port)]
    if args.root_certificates:
        flower += ["--root-certificates", str(Path(args.root_certificates).resolve())]
    else:
        flower += ["--insecure"]
    flower += args.flower_args
    if args.cold:  # Flower's own executor: a fresh flwr-clientapp per message
        cmd = [_bin("flower-supernode"), *flower, "--isolation", "subprocess"]
        threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads is not None else {}
        os.execve(cmd[0], cmd, flower_env(threads))
    os.environ.update(flower_env())
    import torch
    from flwr.supernode.cli.flower_supernode import flower_supernode

    import fedsim.client_app  # noqa: F401  (torch and fedsim imported once, before any message)
    from fedsim.deploy_clientapp import run_pending_tasks
    from fedsim.flower_waits import shorten_supernode
    from fedsim.logging_setup import fedsim_lines_to

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"fedsim-deploy: SuperNode for partition {args.partition_id} of {args.num_partitions};"
        f" fedsim's ClientApp runs in this process, {threads} torch thread"
        + ("s" if threads != 1 else ""),
        flush=True,
    )
    fedsim_lines_to(sys.stderr)  # the ClientApp's errors
    shorten_supernode(args.poll, on_message=run_pending_tasks)
    # Flower's Runtime API still listens (on --port), but no ClientApp process is started: the
    # SuperNode's loop runs each task itself (`fedsim.deploy_clientapp`).
    sys.argv = ["flower-supernode", *flower, "--isolation", "process", "--host", "127.0.0.1"]
    flower_supernode()


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_status(connection: str, run_id: str) -> dict:
    out = subprocess.run(
        [_bin("flwr"), "ls", connection, "--run-id", run_id, "--format", "json"],
        capture_output=True, text=True, env=flower_env(), check=False,
    )  # fmt: skip
    try:
        return json.loads(out.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return {"status": "unknown", "status-details": (out.stdout + out.stderr).strip()}


def _hint_if_still_pending(connection: str, run_id: str, after: float = PENDING_HINT) -> None:
    """In `after` seconds, one line on stderr if run `run_id` has still not started: a SuperLink
    whose SuperExec is gone leaves every run pending, and `flwr run --stream` waits silently."""

    def check() -> None:
        status = str(_run_status(connection, run_id).get("status", ""))
        if status in ("pending", "starting"):
            print(
                f"fedsim-deploy: run {run_id} is still {status} after {after:.0f} s: the SuperLink"
                " has not started its ServerApp. Look for an error in the SuperLink's log (with"
                " TLS, its certificate must also name 127.0.0.1: `fedsim-deploy certificates`"
                " adds it); Ctrl-C stops following, `flwr stop` stops the run",
                file=sys.stderr, flush=True,
            )  # fmt: skip

    timer = threading.Timer(after, check)
    timer.daemon = True
    timer.start()


def run(
    superlink: str,
    overrides: Sequence[str],
    root_certificates: str | None = None,
    stream: bool = True,
) -> int:
    """Submit fedsim with the Hydra `overrides` to the SuperLink at `superlink` (HOST:PORT), print
    its log, and return 0 when the run completed, 1 when it failed or could not start."""
    connection = write_connection(superlink, root_certificates)
    cmd = [_bin("flwr"), "run", str(app_dir()), connection]
    cmd += ["-c", f"overrides={_toml_string(' '.join(overrides))}"]
    if stream:
        cmd.append("--stream")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=flower_env()
    )
    run_id = None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            found = re.search(r"Successfully started run (\d+)", line)
            if found and run_id is None:
                run_id = found.group(1)
                if stream:
                    _hint_if_still_pending(connection, run_id)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        where = f"run {run_id}" if run_id else "the run"
        print(
            f"fedsim-deploy: stopped following {where}; it goes on on the SuperLink (stop it with"
            f" `flwr stop {run_id or '<run id>'} {connection}`)", file=sys.stderr,
        )  # fmt: skip
        return 130
    if code != 0 or run_id is None:
        print(f"fedsim-deploy: `flwr run` failed (exit {code})", file=sys.stderr)
        return 1
    if not stream:
        print(
            f"fedsim-deploy: run {run_id} started; follow it with `flwr log {run_id} {connection}`"
        )
        return 0
    info = _run_status(connection, run_id)
    for _ in range(50):  # the stream can end a moment before the status is final
        if str(info.get("status", "")).startswith("finished"):
            break
        time.sleep(0.2)
        info = _run_status(connection, run_id)
    status = str(info.get("status"))
    if status == "finished:completed":
        print(f"fedsim-deploy: run {run_id} completed")
        return 0
    details = info.get("status-details", "")
    print(f"fedsim-deploy: run {run_id} {status}: {details}", file=sys.stderr)
    return 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsim-deploy", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    link = sub.add_parser("superlink", help="start a SuperLink (Flower's, with the right PATH)")
    link.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines")
    link.add_argument("--port", type=int, default=9092)
    link.add_argument("--outputs", default="outputs", help="run directories without output=")
    link.add_argument("--certificates", help="a directory with ca.pem, server.pem, server.key")
    node = sub.add_parser("supernode", help="start a SuperNode with fedsim's warm ClientApp")
    node.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    node.add_argument("--partition-id", type=int, required=True)
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--port", type=int, help=f"Runtime API port (default {RUNTIME_PORT} + id)")
    node.add_argument("--root-certificates", help="the SuperLink's CA (TLS); none: insecure")
    node.add_argument("--poll", type=float, default=POLL, help="seconds between idle pulls")
    node.add_argument(
        "--threads", type=_positive_int, help="torch threads for training (default: all cores)"
    )
    node.add_argument("--cold", action="store_true", help="Flower's process per message")
    submit = sub.add_parser("run", help="run fedsim on the SuperLink; exit 0 / 1 as it ends")
    submit.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    submit.add_argument("--root-certificates", help="the SuperLink's CA (TLS); none: insecure")
    submit.add_argument("--no-stream", action="store_true", help="return once it has started")
    submit.add_argument("overrides", nargs="*", help="Hydra overrides, as for `fedsim`")
    certs = sub.add_parser("certificates", help="a test CA and SuperLink certificate")
    certs.add_argument("directory")
    certs.add_argument("--host", action="append", required=True, help="IP or DNS name")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args, extra = _parser().parse_known_args(argv)
    args.flower_args = extra
    if args.command == "superlink":
        _superlink(args)
    elif args.command == "supernode":
        _supernode(args)
    elif args.command == "certificates":
        from fedsim.deploy_certs import make_certificates

        for name, path in make_certificates(args.directory, args.host).items():
            print(f"{name}: {path}")
    else:
        if extra:
            print(f"fedsim-deploy run: unknown options {' '.join(extra)}", file=sys.stderr)
            sys.exit(2)
        sys.exit(run(args.superlink, args.overrides, args.root_certificates, not args.no_stream))


if __name__ == "__main__":
    main()
