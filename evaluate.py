"""Evaluate a trained DCGMM on a test set: `python evaluate.py ckpt_path=<ckpt> [data=fashion]`. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

from dcgmm.utils import prepare_environment

prepare_environment(sys.argv[1:])

from dcgmm.evaluation import evaluate  # noqa: E402
from dcgmm.utils import run_entry_point  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    run_entry_point(evaluate, cfg)


if __name__ == "__main__":
    main()
