"""Core math: the layers, the stack built from them, top-down sampling, per-image scores, metrics.

Imports nothing from training, the app or the results pipeline (``tests/test_tiers.py`` checks)."""
