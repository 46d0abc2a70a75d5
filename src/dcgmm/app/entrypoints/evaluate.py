"""Evaluate a trained DCGMM on a test set: ``dcgmm-evaluate ckpt_path=<ckpt> [data=fashion]`` (or ``python evaluate.py ...``)."""

import sys

import hydra
from omegaconf import DictConfig

from dcgmm.app.evaluation import evaluate
from dcgmm.app.locations import CONF_DIR
from dcgmm.app.utils import prepare_environment, run_entry_point


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate.yaml")
def _main(cfg: DictConfig) -> None:
    run_entry_point(evaluate, cfg)


def main() -> None:
    prepare_environment(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
