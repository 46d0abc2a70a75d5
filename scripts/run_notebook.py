"""Run a notebook top to bottom in this interpreter and store its outputs in it (``make notebook``).

Usage: python scripts/run_notebook.py notebooks/walkthrough.ipynb [--tiny]

The notebook runs in the folder it lives in; its figures are stored as PNG outputs of their cells. Cell timings and
other volatile metadata are dropped, so that running it again changes only what the code prints and
draws. ``--tiny`` runs the notebook's tiny preset (what the tests run) and writes nothing back.
Exit status 2 with one line when nbclient or ipykernel (the extra ``dev``) is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

KERNEL = "dcgmm-notebook"


def execute(nb, folder: Path, tiny: bool = False):
    """Execute the notebook ``nb`` in ``folder`` with a kernel spec pointing at this interpreter
    (cells in place); return it without volatile metadata."""
    try:
        import nbclient
    except ImportError as err:
        print(f"error: running the notebook needs the extra 'dev' ({err.name} is missing): pip install -e '.[dev]'", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as scratch:
        # a kernel spec for this interpreter, found first, so the notebook never runs under another python
        spec_dir = Path(scratch) / "jupyter" / "kernels" / KERNEL
        spec_dir.mkdir(parents=True)
        argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "dcgmm", "language": "python"}))
        env = {
            "JUPYTER_PATH": str(Path(scratch) / "jupyter"),
            "JUPYTER_RUNTIME_DIR": str(Path(scratch) / "runtime"),
            "IPYTHONDIR": str(Path(scratch) / "ipython"),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures become cell outputs; nothing opens a window
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "DCGMM_NOTEBOOK_TINY": "1" if tiny else "0",
        }
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=1800, resources={"metadata": {"path": str(folder)}})
            client.execute()  # raises CellExecutionError naming the failing cell
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--tiny", action="store_true", help="run the tiny preset and write nothing back")
    args = parser.parse_args()
    try:
        import nbformat
    except ImportError:
        print("error: running the notebook needs the extra 'dev' (nbformat is missing): pip install -e '.[dev]'", file=sys.stderr)
        sys.exit(2)
    nb = execute(nbformat.read(args.notebook, as_version=4), args.notebook.resolve().parent, tiny=args.tiny)
    if not args.tiny:
        nbformat.write(nb, args.notebook)
        print(f"{args.notebook}: {sum(c.cell_type == 'code' for c in nb.cells)} code cells run, outputs stored")


if __name__ == "__main__":
    main()
