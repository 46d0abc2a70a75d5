"""Draw samples from a trained DCGMM: `python sample.py ckpt_path=<ckpt> n=64 [mode=...]`. See README.md."""

import sys

import hydra
from omegaconf import DictConfig

from dcgmm.utils import prepare_environment

prepare_environment(sys.argv[1:])

from dcgmm.tasks import sample  # noqa: E402
from dcgmm.utils import run_entry_point  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="sample.yaml")
def main(cfg: DictConfig) -> None:
    run_entry_point(sample, cfg)


if __name__ == "__main__":
    main()
