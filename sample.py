"""Draw samples from a trained DCGMM: `python sample.py ckpt_path=<ckpt> n=64 [mode=...]`. See docs/getting-started.md."""

from dcgmm.app.entrypoints.sample import main

if __name__ == "__main__":
    main()
