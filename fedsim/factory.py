"""Build the run's objects (task, attacks, defense) from a plain config dict (resolved Hydra config).

Objects are cached per process: Ray actors and the in-process grid call the client app many times.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch
from hydra.utils import instantiate

from defenses.base import Defense, Identity
from fedsim.tasks.base import Task

__all__ = ["build_task", "build_attacks", "build_defense", "resolve_device"]


def _key(cfg: Any) -> str:
    return json.dumps(cfg, sort_keys=True, default=str)


@lru_cache(maxsize=8)
def _task_from_json(text: str) -> Task:
    return instantiate(json.loads(text), _convert_="all")


def build_task(cfg: dict) -> Task:
    """The task of `cfg["task"]` (a `_target_` node), cached per process."""
    return _task_from_json(_key(cfg["task"]))


def build_attacks(cfg: dict) -> list:
    """The attacks of `cfg["attack"]` in their configured order (each node has a `_target_`)."""
    attacks = []
    for key, node in (cfg.get("attack") or {}).items():
        attack = instantiate(node, _convert_="all")
        if not callable(attack) or not getattr(attack, "name", None):
            raise TypeError(f"attack {key!r} ({node.get('_target_')}) must be callable with a `name`")
        attacks.append(attack)
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    return attacks


def build_defense(cfg: dict) -> Defense:
    """The defense of `cfg["defense"]` (a `_target_` node; null or "none" means no defense)."""
    node = cfg.get("defense")
    if not node or node.get("_target_") in (None, "defenses.base.Identity"):
        return Identity()
    defense = instantiate(node, _convert_="all")
    if not callable(defense) or not getattr(defense, "name", None):
        raise TypeError(f"defense {node.get('_target_')} must be callable with a `name`")
    return defense


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; "cpu", "cuda", "cuda:1" are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for, but torch sees no CUDA GPU; use device=auto or cpu")
    return torch.device(name)
