"""Draw samples from a trained DCGMM: ``dcgmm-sample ckpt_path=<ckpt> n=64 [mode=...]`` (or ``python sample.py ...``)."""

import sys

import hydra
from omegaconf import DictConfig

from dcgmm.app.locations import CONF_DIR
from dcgmm.app.tasks import sample
from dcgmm.app.utils import prepare_environment, run_entry_point


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="sample.yaml")
def _main(cfg: DictConfig) -> None:
    run_entry_point(sample, cfg)


def main() -> None:
    prepare_environment(sys.argv[1:])
    _main()


if __name__ == "__main__":
    main()
