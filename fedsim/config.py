"""Composing and validating the Hydra configuration.

`compose_config(overrides)` gives the resolved config as a plain dict (what the apps take), outside
of the `fedsim` command (deployment, notebooks, tests). `check_overrides` runs before Hydra so that
an unknown key fails at once with the valid keys; `validate_config` checks values.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["CONF_DIR", "ConfigError", "check_overrides", "compose_config", "validate_config"]

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("task", "model", "attack", "defense", "fl", "backend", "experiment")


class ConfigError(ValueError):
    """A configuration problem; the message names it and says how to fix it."""


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(overrides: list[str] | None = None) -> dict[str, Any]:
    """The resolved config for `overrides` (Hydra syntax), validated, as a plain dict."""
    from hydra import compose, initialize_config_dir

    overrides = [o for o in (overrides or []) if o]
    check_overrides(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return validate_config(cfg)


def _base_config() -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config")


def check_overrides(overrides: list[str]) -> None:
    """Raise `ConfigError` for an override of an unknown key or an unknown group option.

    Group choices (`defense=signsgd`, `attack=[rlg,yin]`) are checked against the files in
    `conf/<group>/`; keys (`fl.rounds=5`) against the default config, whose nodes are replaced
    by the chosen options first. Additions with `+` and deletions with `~` are left to Hydra.
    """
    parsed = []
    for text in overrides:
        if text.startswith(("+", "~", "hydra.", "hydra/")) or "=" not in text:
            continue
        key, value = text.split("=", 1)
        parsed.append((key.strip(), value.strip()))
    base = None
    chosen = {}
    for key, value in parsed:
        if key in GROUPS or key.split("@")[0] in GROUPS:
            group = key.split("@")[0]
            names = value.strip("[]").split(",") if value not in ("", "[]", "null") else []
            for name in names:
                name = name.strip()
                if name and name not in _options(group):
                    raise ConfigError(
                        f"unknown {group} {name!r}. Available {group} options: "
                        f"{', '.join(_options(group))}"
                        + (" (several: attack=[rlg,yin])" if group == "attack" else "")
                    )
            chosen[group] = names
    for key, _ in parsed:
        if key.split("@")[0] in GROUPS:
            continue
        if base is None:
            from hydra import compose, initialize_config_dir

            group_overrides = [f"{g}={v[0]}" if g != "attack" else f"attack=[{','.join(v)}]"
                               for g, v in chosen.items() if v or g == "attack"]  # fmt: skip
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                base = compose(config_name="config", overrides=group_overrides)
        _check_key(base, key)


def _check_key(cfg: DictConfig, key: str) -> None:
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return  # inside a list or leaf value: let Hydra judge
        if part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            valid = sorted(k for k in node if k != "hydra")
            close = difflib.get_close_matches(part, valid, n=1)
            hint = f" Did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
            extra = " To add a new key use +key=value." if depth == 0 else ""
            raise ConfigError(
                f"unknown config key {key!r}: {where} has no {part!r}.{hint} "
                f"Valid keys in {where}: {', '.join(valid)}.{extra}"
            )
        node = node[part]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """Check values and return the resolved config as a plain dict (raises `ConfigError`)."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as exc:  # interpolation errors
            raise ConfigError(f"config does not resolve: {exc}") from exc
    cfg = dict(cfg)
    cfg.pop("hydra", None)
    fl = cfg["fl"]
    _require(int(fl["rounds"]) >= 1, f"fl.rounds must be >= 1, got {fl['rounds']}")
    _require(int(fl["clients"]) >= 1, f"fl.clients must be >= 1, got {fl['clients']}")
    _require(0 < float(fl["fraction"]) <= 1, f"fl.fraction must be in (0, 1], got {fl['fraction']}")
    _require(float(fl["lr"]) > 0, f"fl.lr must be > 0, got {fl['lr']}")
    _require(
        int(fl["local_steps"]) >= 1, f"fl.local_steps (K) must be >= 1, got {fl['local_steps']}"
    )
    _require(int(fl["batch_size"]) >= 1, f"fl.batch_size (N) must be >= 1, got {fl['batch_size']}")
    eps = float(fl["label_smoothing"])
    _require(0 <= eps < 1, f"fl.label_smoothing must be in [0, 1), got {eps}")
    _require(
        float(fl["mixup_alpha"]) >= 0,
        f"fl.mixup_alpha must be >= 0 (0: off), got {fl['mixup_alpha']}",
    )
    backend = cfg["backend"]["name"]
    _require(
        backend in ("ray", "inline"), f"backend.name must be 'ray' or 'inline', got {backend!r}"
    )
    device = str(cfg["device"])
    _require(
        device in ("auto", "cpu") or device.startswith("cuda"),
        f"device must be auto, cpu, cuda or cuda:<i>, got {device!r}",
    )
    return cfg
