"""Train a DCGMM: ``dcgmm-train model=dcgmm3 data=fashion`` (or ``python train.py ...``); sweeps with ``-m``."""

import sys

import hydra
from omegaconf import DictConfig

from dcgmm.app.locations import CONF_DIR
from dcgmm.app.tasks import train
from dcgmm.app.utils import metric_value, prepare_environment, run_entry_point


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train.yaml")
def _main(cfg: DictConfig) -> float | None:
    metrics, _ = run_entry_point(train, cfg)
    if metrics is None:  # the job failed inside a multirun (logged by task_wrapper): a failed trial, the sweep goes on
        return None
    return metric_value(metrics, cfg.get("optimized_metric"))


def main() -> None:
    prepare_environment(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
