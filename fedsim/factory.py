"""Build the run's objects (task, attacks, defense) from a plain dict (the resolved Hydra config).

Objects are cached per process: Ray actors and the in-process grid call the client app many times.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch
from hydra.utils import instantiate

from defenses.identity import Identity
from fedcore import Defense
from fedcore.devices import resolve_device as fedcore_resolve_device
from fedsim.config import ConfigError
from fedsim.tasks.base import Task

__all__ = ["build_attacks", "build_defense", "build_task", "resolve_device"]


def config_key(cfg: Any) -> str:
    """A canonical string of a config node (the key of per-process caches)."""
    return json.dumps(cfg, sort_keys=True, default=str)


def _instantiate(node: dict, what: str):
    """`hydra.utils.instantiate`, with a missing `_target_` or a constructor's complaint turned
    into one `ConfigError` that names the config node."""
    if not isinstance(node, dict) or not node.get("_target_"):
        raise ConfigError(f"{what} needs a `_target_` (the plugin class to build), got {node!r}")
    try:
        return instantiate(node, _convert_="all")
    except Exception as exc:
        cause = exc.__cause__ or exc
        if isinstance(
            cause, FileNotFoundError
        ):  # missing data: its own message says what to install
            raise cause from None
        raise ConfigError(f"cannot build {what} ({node['_target_']}): {cause}") from exc


@lru_cache(maxsize=8)
def _task_from_json(text: str) -> Task:
    return _instantiate(json.loads(text), "task")


def build_task(cfg: dict) -> Task:
    """The task of `cfg["task"]` (a `_target_` node), cached per process."""
    return _task_from_json(config_key(cfg["task"]))


def build_attacks(cfg: dict) -> list:
    """The attacks of `cfg["attack"]` in their configured order (each node has a `_target_`)."""
    attacks = []
    for key, node in (cfg.get("attack") or {}).items():
        attack = _instantiate(node, f"attack {key!r}")
        if not callable(attack) or not getattr(attack, "name", None):
            raise ConfigError(
                f"attack {key!r} ({node.get('_target_')}) must be callable with a `name`"
            )
        attacks.append(attack)
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ConfigError(f"attack names must be unique, got {names}")
    return attacks


def build_defense(cfg: dict) -> Defense:
    """The defense of `cfg["defense"]` (a `_target_` node; null or "none" means no defense)."""
    node = cfg.get("defense")
    if not node or node.get("_target_") in (None, "defenses.identity.Identity"):
        return Identity()
    defense = _instantiate(node, "defense")
    if not callable(defense) or not getattr(defense, "name", None):
        raise ConfigError(f"defense {node.get('_target_')} must be callable with a `name`")
    return defense


def resolve_device(name: str) -> torch.device:
    """`fedcore.devices.resolve_device` ("auto": CUDA when present, else CPU; "cpu", "cuda",
    "cuda:1" as given), with its complaint turned into a `ConfigError`."""
    try:
        return fedcore_resolve_device(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
