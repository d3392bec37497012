"""Composing and validating the Hydra configuration.

`compose_config(overrides)` is the one function that composes the config (Hydra's compose API):
the `fedsim` command's pre-flight check, deployment, notebooks and tests all go through it. It
turns Hydra's and OmegaConf's exceptions into a one-line `ConfigError` (an unknown key with the
closest valid one, an unknown group option with the available ones, a value of the wrong type).

Which keys exist and their types come from the schemas in `fedsim.schema` (struct mode rejects
any other key); `validate(cfg)` checks every value range and that the model fits the task.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from fedsim.schedule import LR_SCHEDULES
from fedsim.schema import register

__all__ = ["CONF_DIR", "ConfigError", "compose_config", "preflight_overrides", "validate"]

CONF_DIR = Path(__file__).parent / "conf"
register()
# `${fedsim_first:a,b,...}`: the first argument that is not null (conf/config.yaml: hydra.run.dir
# is `resume`, else `output`, else Hydra's outputs/DATE/TIME, so cli.log lands in the run dir).
OmegaConf.register_new_resolver(
    "fedsim_first", lambda *args: next((a for a in args if a is not None), None), replace=True
)


class ConfigError(ValueError):
    """A configuration problem; the message names it and says how to fix it."""


@contextmanager
def _hydra() -> Iterator[None]:
    """Hydra initialised on `CONF_DIR`, unless it already is (inside `@hydra.main`)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def compose_config(overrides: list[str] | None = None) -> dict[str, Any]:
    """The config for `overrides` (Hydra syntax, `hydra.searchpath=[...]` included), composed,
    validated and resolved to a plain dict; raises `ConfigError` with a one-line message."""
    from hydra import compose

    overrides = [o for o in (overrides or []) if o]
    with _hydra():
        try:
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        except Exception as exc:
            raise _explain(exc, overrides) from exc
        return validate(cfg, cfg.hydra)


def preflight_overrides(overrides: list[str], multirun: bool = True) -> list[list[str]]:
    """Override lists to check before a run: `overrides` itself, or for a sweep (`-m
    defense=none,signsgd`) the first value of every sweep plus each other value once. Without
    `multirun` a sweep stays as it is (composing it says to add --multirun)."""
    if not multirun:
        return [list(overrides)]
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise _explain(exc, overrides) from exc
    base, sweeps = [], []
    for override in parsed:
        if not override.is_sweep_override():
            base.append(override.input_line)
        elif override.is_discrete_sweep() and override.value_type != ValueType.GLOB_CHOICE_SWEEP:
            key = override.get_key_element()
            values = [f"{key}={v}" for v in override.sweep_string_iterator()]
            base.append(values[0])
            sweeps.append((len(base) - 1, values[1:]))
    sets = [base]
    for index, values in sweeps:
        sets += [[*base[:index], value, *base[index + 1 :]] for value in values]
    return sets


# --------------------------------------------------------------------------- errors from Hydra


def _first_lines(text: str) -> str:
    """Hydra's message as one line: its own lines joined, without the search path listing."""
    text = text.split("\nConfig search path:")[0].split("\nSearch path:")[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _searchpath(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath"]


def _group_options(group: str, overrides: list[str]) -> list[str]:
    """The options of a config group in Hydra's repository (the user's search path included)."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(
        loader.get_group_options(group, config_name="config", overrides=_searchpath(overrides))
    )


def _explain(exc: Exception, overrides: list[str]) -> ConfigError:
    """One `ConfigError` line for an exception of Hydra's compose."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, OverrideParseException):
        return ConfigError(f"cannot parse {exc.override!r}: {_first_lines(exc.message)}")
    if (
        isinstance(exc, MissingConfigException)
        and exc.missing_cfg_file
        and "/" in str(exc.missing_cfg_file)
    ):
        group, name = str(exc.missing_cfg_file).rsplit("/", 1)
        options = list(exc.options or _group_options(group, overrides))
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        several = " (several: attack=[rlg,yin])" if group == "attack" else ""
        return ConfigError(
            f"unknown {group} {name!r}.{hint} Available {group} options: "
            f"{', '.join(options)}{several}"
        )
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):
        return _unknown_key(cause, exc)
    if isinstance(cause, ValidationError):
        return _bad_type(cause, exc)
    return ConfigError(_first_lines(str(exc)) or _first_lines(str(cause)) or repr(exc))


def _unknown_key(cause: OmegaConfBaseException, exc: Exception) -> ConfigError:
    full_key = str(cause.full_key or cause.key)
    asked = re.search(r"Could not override '([^']+)'", str(exc))
    key = asked.group(1) if asked else full_key
    parts = full_key.split(".")
    where = ".".join(parts[:-1]) or "the top level"
    node = cause.parent_node
    valid = sorted(str(k) for k in node if k != "hydra") if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(parts[-1], valid, n=1)
    hint = f" Did you mean {'.'.join([*parts[:-1], close[0]])!r}?" if close else ""
    free_form = isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict
    extra = f" To add a key to this plugin node use +{key}=..." if free_form else ""
    return ConfigError(
        f"unknown config key {key!r}: {where} has no {parts[-1]!r}.{hint} "
        f"Valid keys in {where}: {', '.join(valid) or '(none)'}.{extra}"
    )


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _bad_type(cause: ValidationError, exc: Exception) -> ConfigError:
    key = str(cause.full_key or cause.key)
    expected = None
    schema, field = cause.object_type, cause.key
    if schema is not None and hasattr(schema, "__dataclass_fields__") and field is not None:
        hint = typing.get_type_hints(schema).get(str(field))
        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        expected = _TYPE_NAMES.get(args[0])
        if expected and type(None) in typing.get_args(hint):
            expected += " or null"
    value = getattr(cause, "value", None)
    asked = re.search(r"override (\S+?)=(.*)$", str(exc))
    if asked:
        value = asked.group(2)
    shown = "null" if value in (None, "null") else repr(value)
    if expected is None:
        return ConfigError(f"bad value for {key}: {_first_lines(str(cause.msg))}")
    return ConfigError(f"{key} must be {expected}, got {shown}")


# --------------------------------------------------------------------------- value checks


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _article(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def _task_default_model(task: str, hydra: Any) -> str | None:
    """The model a task picks in its own defaults list (Hydra's defaults list, user search path
    included), or None when Hydra is not initialised."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    if not GlobalHydra.instance().is_initialized():
        return None
    searchpath = list(OmegaConf.select(hydra, "searchpath", default=None) or [])
    overrides = [f"task={task}"]
    if searchpath:
        quoted = ",".join("'" + p.replace("'", "\\'") + "'" for p in searchpath)
        overrides.append(f"hydra.searchpath=[{quoted}]")
    try:
        defaults = (
            GlobalHydra.instance()
            .config_loader()
            .compute_defaults_list("config", overrides, RunMode.RUN)
        )
    except Exception:
        return None
    return defaults.overrides.known_choices.get("model")


def validate(cfg: DictConfig | Mapping, hydra: Any = None) -> dict[str, Any]:
    """Check every value range, and the model against the task; return the resolved config as a
    plain dict (without the `hydra` node). Raises `ConfigError` naming the key and the range.

    `hydra`: the composed `hydra` node (or `HydraConfig.get()`), whose choices name the task and
    the model for the model/task check; without it that check is skipped.
    """
    if isinstance(cfg, DictConfig):
        if hydra is None and "hydra" in cfg:
            hydra = cfg.hydra
        try:  # node by node, leaving out the `hydra` node
            plain = {
                key: OmegaConf.to_container(cfg[key], resolve=True)
                if OmegaConf.is_config(cfg[key])
                else cfg[key]
                for key in cfg
                if key != "hydra"
            }
        except Exception as exc:  # interpolation errors
            raise ConfigError(f"config does not resolve: {_first_lines(str(exc))}") from exc
    else:
        plain = {key: value for key, value in cfg.items() if key != "hydra"}
    cfg = plain
    fl = cfg["fl"]
    _require(int(fl["rounds"]) >= 1, f"fl.rounds must be >= 1, got {fl['rounds']}")
    _require(int(fl["clients"]) >= 1, f"fl.clients must be >= 1, got {fl['clients']}")
    _require(0 < float(fl["fraction"]) <= 1, f"fl.fraction must be in (0, 1], got {fl['fraction']}")
    _require(float(fl["lr"]) > 0, f"fl.lr must be > 0, got {fl['lr']}")
    _require(
        fl.get("lr_schedule", "constant") in LR_SCHEDULES,
        f"fl.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {fl.get('lr_schedule')!r}",
    )
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

    backend = cfg["backend"] or {}
    name = backend.get("name")
    _require(name in ("ray", "inline"), f"backend.name must be 'ray' or 'inline', got {name!r}")
    for key in ("num_cpus", "client_cpus", "client_threads", "object_store_mb"):
        value = backend.get(key)
        _require(value is None or int(value) >= 1, f"backend.{key} must be >= 1, got {value}")
    gpus = backend.get("client_gpus")
    _require(gpus is None or float(gpus) >= 0, f"backend.client_gpus must be >= 0, got {gpus}")

    device = str(cfg["device"])
    _require(
        re.fullmatch(r"auto|cpu|cuda(:\d+)?", device) is not None,
        f"device must be auto, cpu, cuda or cuda:<i>, got {device!r}",
    )
    _require(int(cfg["seed"]) >= 0, f"seed must be >= 0, got {cfg['seed']}")
    for key in ("attack_timeout", "round_timeout"):
        value = cfg.get(key)
        _require(
            value is None or float(value) > 0, f"{key} must be > 0 seconds or null, got {value}"
        )
    _require(
        float(cfg["connect_timeout"]) > 0,
        f"connect_timeout must be > 0 seconds, got {cfg['connect_timeout']}",
    )

    for group in ("task", "model", "defense"):
        node = cfg.get(group)
        _require(
            node is None or isinstance(node, dict),
            f"{group} must be a config node with a `_target_`, got {node!r}",
        )
    _require(isinstance(cfg.get("task"), dict), "task must be set (task=image or task=asr)")
    _check_model_fits_task(cfg, hydra)
    return cfg


def _check_model_fits_task(cfg: dict, hydra: Any) -> None:
    """A model's YAML names the task it is for (`task: image`); it must be the chosen task."""
    model = cfg.get("model") or {}
    fits = model.get("task") if isinstance(model, dict) else None
    choices = (
        OmegaConf.select(hydra, "runtime.choices", default=None) if hydra is not None else None
    )
    task = choices.get("task") if choices else None
    if not fits or not task or fits == task:
        return
    name = choices.get("model") or model.get("_target_")
    takes = _task_default_model(task, hydra)
    raise ConfigError(
        f"model {name} is {_article(str(fits))} model; task={task} takes "
        + (f"model={takes}" if takes else f"a model whose YAML says `task: {task}`")
    )
