"""Evaluate a trained DCGMM on a test set: `python evaluate.py ckpt_path=<ckpt> [data=fashion]`. See docs/getting-started.md."""

from dcgmm.app.entrypoints.evaluate import main

if __name__ == "__main__":
    main()
