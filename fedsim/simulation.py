"""Run one configured experiment on a simulation backend: `ray` (Flower's engine) or `inline`."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from fedsim.client_app import build_client_app
from fedsim.config import ConfigError
from fedsim.defense_mod import CLIENT_STATE
from fedsim.factory import build_attacks, build_defense, build_task, resolve_device
from fedsim.logging_setup import tame_flower_logging
from fedsim.progress import device_line
from fedsim.ray_engine import EngineExitGuard, replace_dead_actors
from fedsim.run_control import install_handlers, raise_if_stopping, stop_on_signals
from fedsim.server_app import build_server_app

__all__ = ["check_resume", "quiet_environment", "resumed_config", "run_experiment"]

log = logging.getLogger("fedsim")


def quiet_environment() -> None:
    """Environment for Flower and Ray: no telemetry, no update check, no accelerator warning."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _ray_backend_config(cfg: dict) -> dict:
    backend = cfg["backend"]
    num_cpus = int(backend.get("num_cpus") or os.cpu_count() or 1)
    client_cpus = min(int(backend.get("client_cpus") or 1), num_cpus)
    gpus = backend.get("client_gpus")
    uses_gpu = cfg["device"] != "cpu" and torch.cuda.is_available()
    if gpus is None:
        gpus = min(1.0, client_cpus / num_cpus) if uses_gpu else 0.0
    init_args = {
        "num_cpus": num_cpus,
        "object_store_memory": int(backend.get("object_store_mb", 512)) * 2**20,
        "logging_level": "warning",
    }
    if uses_gpu:
        init_args["num_gpus"] = torch.cuda.device_count()
    return {
        "client_resources": {"num_cpus": client_cpus, "num_gpus": float(gpus)},
        "init_args": init_args,
    }


class _ServerError:
    """Carries an exception out of the ServerApp thread (Ray's engine only logs it)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


def resumed_config(cfg: dict, changed: Sequence[str] = ("fl.rounds",)) -> tuple[dict, Path]:
    """The saved config of the run in `cfg["resume"]`, with this command's values of the keys in
    `changed` (`fl.rounds`, and the `device` / `backend.*` keys given on the command line)."""
    run_dir = Path(cfg["resume"])
    path, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "latest.pt"
    if not path.exists() or not checkpoint.exists():
        raise ConfigError(f"resume={run_dir}: no config.yaml and checkpoints/latest.pt there")
    saved = yaml.safe_load(path.read_text())
    for key in dict.fromkeys(["fl.rounds", *changed]):
        value = _select(cfg, key)
        if value is _ABSENT:
            continue
        *parents, last = key.split(".")
        node = saved
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    saved["resume"] = str(run_dir)
    return saved, run_dir


# Keys a resumed run may set differently from its saved config (a key and everything under it).
RESUME_MAY_CHANGE = ("fl.rounds", "resume", "output", "device", "backend", "hydra")


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


_ABSENT = "<absent>"


def _select(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def check_resume(cfg: dict, overrides: Sequence[str]) -> list[str]:
    """A `resume=` command must give `fl.rounds` and no override that differs from the saved
    config (a resumed run continues the saved config); raises `ConfigError` naming the fix.
    Returns the keys the resumed run takes from this command (`resumed_config`'s `changed`)."""
    if not cfg.get("resume"):
        return []
    run_dir = Path(cfg["resume"])
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"resume={run_dir}: no config.yaml there (not a fedsim run directory)")
    saved = yaml.safe_load(path.read_text())
    keys = [_key_of(o) for o in overrides]
    if "fl.rounds" not in keys:
        raise ConfigError(
            f"resume={run_dir} needs the run's total rounds on the command line: add "
            f"fl.rounds=<total> (the saved run was for fl.rounds={saved['fl']['rounds']})"
        )
    differ = []
    for key in dict.fromkeys(keys):
        if any(key == a or key.startswith(a + ".") for a in RESUME_MAY_CHANGE):
            continue
        given, was = _select(cfg, key), _select(saved, key)
        if given != was:
            differ.append(f"{key} (saved {was!r}, given {given!r})")
    if differ:
        raise ConfigError(
            f"resume={run_dir} continues the saved config of that run, but these overrides "
            f"differ from it: {'; '.join(differ)}. Drop them (only fl.rounds, device, backend.* "
            "and output may change), or start a new run with output=<new dir>"
        )
    return [k for k in keys if k in ("fl.rounds", "device") or k.split(".")[0] == "backend"]


def check_buildable(cfg: dict) -> torch.device:
    """Build what can fail on the config (device, attacks, task and its data, defense) before
    anything is written; returns the device. Raises `ConfigError` (or the data's own error).
    The task is built here first so data caches (the speech corpus, its word pieces) are
    prepared once, with progress, not by every Ray worker at the same time."""
    device = resolve_device(cfg["device"])  # device=cuda without a GPU: a config error
    build_attacks(cfg)
    build_task(cfg)
    build_defense(cfg)
    return device


def write_config(run_dir: Path, cfg: dict) -> None:
    """`run_dir/config.yaml`: the run's resolved config (what `resume=` reads)."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def saved_round(run_dir: Path) -> int:
    """The last round whose checkpoint `run_dir` holds."""
    return int(torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)["round"])


def _start_ray(init_args: dict) -> None:
    """Start Ray here (as Flower would), so that this process's signal handlers can be installed
    after `ray.init` (which replaces the SIGTERM handler)."""
    import ray

    if ray.is_initialized():
        return
    log.info(
        "starting Ray (%d CPUs; about 15-30 s on 2 cores, the first round also starts the"
        " clients)...", int(init_args.get("num_cpus") or os.cpu_count() or 1),
    )  # fmt: skip
    start = time.perf_counter()
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        **{"include_dashboard": False, **init_args},
    )
    log.info("Ray started in %.0f s", time.perf_counter() - start)


def run_experiment(
    cfg: dict, run_dir: str | Path, resume_changes: Sequence[str] = ("fl.rounds",)
) -> Path:
    """Run the experiment `cfg` (validated plain dict) and return its run directory.

    Everything that can fail on the config (attacks, task and data, defense, device) is built
    before the run directory is written, so a config error leaves no stub behind. A SIGINT or
    SIGTERM stops the run after its last finished round and raises `RunStopped`
    (`fedsim.run_control`). A resumed run (`cfg["resume"]`) takes the saved config with this
    `cfg`'s values of the keys in `resume_changes` (`fl.rounds`, `device`, `backend.*`).
    """
    quiet_environment()
    if cfg.get("resume"):
        cfg, run_dir = resumed_config(cfg, resume_changes)
        done, rounds = saved_round(run_dir), int(cfg["fl"]["rounds"])
        if done >= rounds:
            log.info(
                "nothing to do: %s already has %d rounds (fl.rounds=%d); config.yaml is left as"
                " it is (raise fl.rounds to continue)", run_dir, done, rounds,
            )  # fmt: skip
            return Path(run_dir)
    run_dir = Path(run_dir)
    audit = True if cfg.get("audit") is None else bool(cfg["audit"])
    clients = int(cfg["fl"]["clients"])
    device = check_buildable(cfg)
    state_dir = run_dir.resolve() / CLIENT_STATE
    client_app = build_client_app(cfg, state_dir=state_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.get("resume") and state_dir.exists():
        shutil.rmtree(state_dir)  # a new run in an old directory: no state from the old run
    write_config(run_dir, cfg)
    holder = _ServerError()
    server_app = build_server_app(cfg, run_dir, audit, on_error=holder)
    tame_flower_logging()
    log.info("%s", device_line(device))
    with stop_on_signals(run_dir, int(cfg["fl"]["rounds"])):
        if cfg["backend"]["name"] == "inline":
            from fedsim.inline_grid import run_inline

            run_inline(server_app, client_app, clients)
        else:
            from flwr.simulation import run_simulation  # slow import (about 5 s): when needed

            backend_config = _ray_backend_config(cfg)
            _start_ray(backend_config["init_args"])
            install_handlers()  # again: ray.init replaced the SIGTERM handler
            raise_if_stopping()
            replace_dead_actors()  # a killed client process: a fresh actor, not failed rounds
            with EngineExitGuard() as guard:  # a stuck client cannot hold the run's end up
                run_simulation(
                    server_app=guard.wrap(server_app),
                    client_app=client_app,
                    num_supernodes=clients,
                    backend_config=backend_config,
                )
        if holder.error is not None:
            raise holder.error
    return run_dir
