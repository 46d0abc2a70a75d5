"""Train a DCGMM: `python train.py model=dcgmm3 data=fashion`, sweeps with `-m`. See README.md."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from dcgmm.utils import prepare_environment

prepare_environment()

from dcgmm.data import DataError  # noqa: E402
from dcgmm.errors import ConfigError, TrainingDiverged  # noqa: E402
from dcgmm.tasks import train  # noqa: E402
from dcgmm.utils import metric_value  # noqa: E402

log = logging.getLogger("dcgmm")


@hydra.main(version_base="1.3", config_path="conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except (ConfigError, DataError, TrainingDiverged) as err:
        log.error(f"{type(err).__name__}: {err}")
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if metrics is None:  # the job failed inside a multirun (logged by task_wrapper): a failed trial, the sweep goes on
        return None
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
