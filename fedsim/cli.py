"""`fedsim`: run one experiment (or a Hydra multirun sweep) and print its summary.

fedsim                                   # the default experiment (conf/config.yaml)
fedsim defense=signsgd fl.rounds=60
fedsim -m backend=inline defense=none,signsgd,graddrop

Exit codes: 0 done; 1 a round aggregated no update (every client failed, timed out or sent a
non-finite update; each such round is named on stderr); 2 a config or data error; 130 / 143
stopped by SIGINT (Ctrl-C) / SIGTERM after the last finished round (the line printed says how to
resume).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.config import CONF_DIR, ConfigError, compose_config, preflight_overrides, validate
from fedsim.data.fashion_mnist import MissingDataError
from fedsim.simulation import quiet_environment

log = logging.getLogger("fedsim")

# Lines of rounds that aggregated no update, over this process's runs (a sweep's jobs included):
# `main` exits 1 when there are any, after every job has run and been summarised.
_FAILED: list[str] = []


# What Hydra writes into a job's directory before the run starts (removed again on a config error).
_HYDRA_FILES = (".hydra", "cli.log")
# Run directories that existed before this command (a config error never removes anything there).
_EXISTING: set[Path] = set()


def _remove_stub(run_dir: str | Path) -> None:
    """After a config error: remove what Hydra and fedsim wrote to a directory this command
    created, and the directory when that leaves it empty (never round logs or anything else)."""
    import shutil

    path = Path(run_dir)
    if not path.is_dir() or path.resolve() in _EXISTING:
        return
    for name in (*_HYDRA_FILES, "config.yaml"):
        item = path / name
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        elif item.exists():
            item.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
        if path.parent.parent.name == "outputs":
            path.parent.rmdir()  # Hydra's outputs/DATE, when this was its only run


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from fedsim.run_control import RunStopped, print_hint_once
    from fedsim.simulation import check_resume, run_experiment
    from fedsim.summary import print_summary

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        plain = validate(cfg, HydraConfig.get())
        changes = check_resume(plain, list(HydraConfig.get().overrides.task))
        run_dir = plain.get("resume") or plain.get("output") or run_dir
        log.info("run directory: %s", run_dir)
        run_dir = run_experiment(plain, run_dir, resume_changes=changes)
    except (ConfigError, MissingDataError) as exc:
        log.error("%s", exc)
        _remove_stub(HydraConfig.get().runtime.output_dir)
        sys.exit(2)
    except RunStopped as stop:
        print_hint_once(stop.hint)
        sys.exit(stop.code)
    failed = print_summary(run_dir)
    _FAILED.extend(f"{run_dir}: {line}" for line in failed)


def _preflight(argv: list[str]) -> None:
    """Compose the command line's config (each value of a sweep once) before Hydra starts, so a
    mistake fails at once with one line. Hydra's own flags are read by Hydra's parser; runs with
    another primary config (`--config-name`, `--config-dir`) or asking for help go to Hydra."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion:
        return
    if args.config_name or args.config_path or args.config_dir:
        return
    for overrides in preflight_overrides(args.overrides, args.multirun):
        cfg = compose_config(overrides)
        for key in ("output", "resume"):
            if cfg.get(key) and Path(cfg[key]).exists():
                _EXISTING.add(Path(cfg[key]).resolve())


def main() -> None:
    """Console entry point: check the command line's config, then hand over to Hydra."""
    quiet_environment()
    try:
        _preflight(sys.argv[1:])
    except ConfigError as exc:
        print(f"fedsim: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    _run()
    if _FAILED:
        for line in _FAILED:
            print(f"fedsim: {line}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
