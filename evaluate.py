"""Evaluate a trained DCGMM on a test set: `python evaluate.py ckpt_path=<ckpt> [data=fashion]`. See README.md."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from dcgmm.utils import prepare_environment

prepare_environment()

from dcgmm.data import DataError  # noqa: E402
from dcgmm.errors import ConfigError  # noqa: E402
from dcgmm.evaluation import evaluate  # noqa: E402

log = logging.getLogger("dcgmm")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (ConfigError, DataError) as err:
        log.error(f"{type(err).__name__}: {err}")
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
