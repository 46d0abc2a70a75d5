"""Where things are: the package's Hydra configs and the project folder that holds ``data/`` and
``logs/``. Every entry point, the config composer and the command-line checks read them here."""

from __future__ import annotations

import os
from pathlib import Path

from dcgmm.errors import ConfigError

__all__ = ["CONF_DIR", "conf_dir", "project_root"]

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # src/dcgmm/conf, shipped in the package


def conf_dir() -> Path:
    """The config folder: ``$DCGMM_CONF_DIR`` when set (a copy to experiment with), else the
    package's own. A one-line ConfigError when it has no ``model/`` folder."""
    explicit = os.environ.get("DCGMM_CONF_DIR")
    folder = Path(explicit).expanduser() if explicit else CONF_DIR
    if not (folder / "model").is_dir():
        where = f"DCGMM_CONF_DIR={explicit}" if explicit else f"the package's config folder {folder}"
        raise ConfigError(f"{where} has no model/ folder; point DCGMM_CONF_DIR at a copy of src/dcgmm/conf")
    return folder


def project_root() -> Path:
    """The checkout that holds this package (a source tree or an editable install), else the
    current folder: the root of ``data/`` and ``logs/`` (``paths.root_dir``)."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / "dcgmm").is_dir():
        return checkout
    return Path.cwd()
