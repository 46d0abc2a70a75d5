"""Benchmarks of the DCGMM implementation: speed, memory and density against reference methods.

Run them from the repository root with ``python -m benchmarks.run SUBCOMMAND`` (``--help`` lists
the subcommands). Saved results live in ``benchmarks/results/``.
"""
