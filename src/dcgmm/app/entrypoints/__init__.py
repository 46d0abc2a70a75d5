"""The command-line programs: ``dcgmm-train``, ``dcgmm-evaluate`` and ``dcgmm-sample`` (console
scripts of the installed package) and the checkout's ``train.py``, ``evaluate.py`` and
``sample.py``, which call the same ``main`` functions."""
