"""Run one configured experiment on a simulation backend: `ray` (Flower's engine) or `inline`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import yaml

from fedsim.client_app import build_client_app
from fedsim.factory import build_attacks, build_task
from fedsim.logging_setup import tame_flower_logging
from fedsim.server_app import build_server_app

__all__ = ["quiet_environment", "run_experiment"]

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


def resumed_config(cfg: dict) -> tuple[dict, Path]:
    """The saved config of the run in `cfg["resume"]`, with this command's `fl.rounds`."""
    run_dir = Path(cfg["resume"])
    path, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "latest.pt"
    if not path.exists() or not checkpoint.exists():
        from fedsim.config import ConfigError

        raise ConfigError(f"resume={run_dir}: no config.yaml and checkpoints/latest.pt there")
    saved = yaml.safe_load(path.read_text())
    saved["fl"]["rounds"] = cfg["fl"]["rounds"]
    saved["resume"] = str(run_dir)
    return saved, run_dir


def run_experiment(cfg: dict, run_dir: str | Path) -> Path:
    """Run the experiment `cfg` (validated plain dict) and return its run directory."""
    quiet_environment()
    if cfg.get("resume"):
        cfg, run_dir = resumed_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    audit = True if cfg.get("audit") is None else bool(cfg["audit"])
    clients = int(cfg["fl"]["clients"])
    build_attacks(cfg)  # fail on a bad attack config now, before any client starts
    # Build the task here first: data caches (the speech corpus, its word pieces) are prepared
    # once, with progress, instead of by every Ray worker at the same time.
    build_task(cfg)
    client_app = build_client_app(cfg)
    holder = _ServerError()
    server_app = build_server_app(cfg, run_dir, audit, on_error=holder)
    tame_flower_logging()
    if cfg["backend"]["name"] == "inline":
        from fedsim.inline_grid import run_inline

        run_inline(server_app, client_app, clients)
    else:
        from flwr.simulation import run_simulation  # slow import (about 5 s): only when needed

        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=clients,
            backend_config=_ray_backend_config(cfg),
        )
    if holder.error is not None:
        raise holder.error
    return run_dir
