"""Train a DCGMM: `python train.py model=dcgmm3 data=fashion`, sweeps with `-m`. See docs/getting-started.md."""

from dcgmm.app.entrypoints.train import main

if __name__ == "__main__":
    main()
