"""Train a DCGMM: `python train.py model=dcgmm3 data=fashion`, sweeps with `-m`. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

from dcgmm.utils import prepare_environment

prepare_environment(sys.argv[1:])

from dcgmm.tasks import train  # noqa: E402
from dcgmm.utils import metric_value, run_entry_point  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = run_entry_point(train, cfg)
    if metrics is None:  # the job failed inside a multirun (logged by task_wrapper): a failed trial, the sweep goes on
        return None
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
