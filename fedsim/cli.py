"""`fedsim`: run one experiment (or a Hydra multirun sweep) and print its summary.

fedsim                                   # the default experiment (conf/config.yaml)
fedsim defense=signsgd fl.rounds=60
fedsim -m backend=inline defense=none,signsgd,graddrop

Exit codes: 0 done; 1 a round aggregated no update (every client failed, timed out or sent a
non-finite update; each such round is named on stderr); 2 a config or data error.
"""

from __future__ import annotations

import logging
import sys

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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from fedsim.simulation import run_experiment
    from fedsim.summary import print_summary

    try:
        plain = validate(cfg, HydraConfig.get())
        run_dir = plain.get("resume") or plain.get("output") or HydraConfig.get().runtime.output_dir
        log.info("run directory: %s", run_dir)
        run_dir = run_experiment(plain, run_dir)
    except (ConfigError, MissingDataError) as exc:
        log.error("%s", exc)
        sys.exit(2)
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
        compose_config(overrides)


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
