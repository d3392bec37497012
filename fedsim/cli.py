"""`fedsim`: run one experiment (or a Hydra multirun sweep) and print its summary.

fedsim                                   # the default experiment (conf/config.yaml)
fedsim model=resnet18 defense=signsgd fl.rounds=5
fedsim -m backend=inline defense=none,signsgd,graddrop
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.config import CONF_DIR, ConfigError, check_overrides, validate_config
from fedsim.data.fashion_mnist import MissingDataError
from fedsim.simulation import quiet_environment

log = logging.getLogger("fedsim")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    from fedsim.simulation import run_experiment
    from fedsim.summary import print_summary

    try:
        plain = validate_config(cfg)
        run_dir = plain.get("resume") or plain.get("output") or HydraConfig.get().runtime.output_dir
        log.info("run directory: %s", run_dir)
        run_dir = run_experiment(plain, run_dir)
    except (ConfigError, MissingDataError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    print_summary(run_dir)


def main() -> None:
    """Console entry point: check the overrides, then hand over to Hydra."""
    quiet_environment()
    try:
        check_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
    except ConfigError as exc:
        print(f"fedsim: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    _run()


if __name__ == "__main__":
    main()
