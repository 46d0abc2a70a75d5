"""Draw samples from a trained DCGMM: `python sample.py ckpt_path=<ckpt> n=64 [mode=...]`. See README.md."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from dcgmm.utils import prepare_environment

prepare_environment()

from dcgmm.data import DataError  # noqa: E402
from dcgmm.errors import ConfigError  # noqa: E402
from dcgmm.tasks import sample  # noqa: E402

log = logging.getLogger("dcgmm")


@hydra.main(version_base="1.3", config_path="conf", config_name="sample.yaml")
def main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except (ConfigError, DataError) as err:
        log.error(f"{type(err).__name__}: {err}")
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
