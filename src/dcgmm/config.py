"""One way from the config files to objects (docs/design.md section 9).

The Hydra configs ship inside the package (``src/dcgmm/conf``; a checkout's ``conf/`` links
there), so an installed package finds them. :func:`compose` composes a task's config with
override strings exactly as ``python train.py OVERRIDES`` does, without running Hydra's job
machinery (nothing is written); :func:`model_config` is the ``model`` node of such a
composition; :func:`build_model` instantiates it. The Python API, the benchmarks, the results
pipeline and the tests all go through these, so a topology means the same everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from dcgmm.errors import ConfigError

__all__ = ["CONF_DIR", "build_model", "compose", "conf_dir", "known_topologies", "model_config", "project_root"]

CONF_DIR = Path(__file__).resolve().parent / "conf"


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
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / "dcgmm").is_dir():
        return checkout
    return Path.cwd()


def known_topologies() -> list[str]:
    """The names ``model=`` accepts (the files of ``conf/model``, without the shared ``_*`` ones)."""
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml") if not p.stem.startswith("_"))


def compose(
    config_name: str = "train",
    overrides: Sequence[str] = (),
    *,
    output_dir: str | os.PathLike | None = None,
    root_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = None,
) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` as the command line would.

    Args:
        config_name: ``train``, ``evaluate`` or ``sample``.
        overrides: Hydra override strings, e.g. ``["model=dcgmm2", "model.layers.1.K=64"]``.
        output_dir: the run folder (``paths.output_dir``); ``None``: ``<log_dir>/compose``. Not created.
        root_dir, data_dir, log_dir: ``paths.*``; ``None`` keeps the config's (``root_dir``:
            :func:`project_root`).

    Returns:
        The config with its ``hydra`` node, registered as the current Hydra config so that
        ``${hydra:...}`` interpolations resolve (as inside a Hydra job).

    Raises:
        ConfigError: one line for an unknown config group option or a malformed override.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dcgmm.utils import prepare_environment

    prepare_environment()
    name = config_name if config_name.endswith(".yaml") else f"{config_name}.yaml"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=name, return_hydra_config=True, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot compose {name} with {list(overrides)}: {first}") from None
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.root_dir = str(root_dir if root_dir is not None else project_root())
        if data_dir is not None:
            cfg.paths.data_dir = str(data_dir)
        if log_dir is not None:
            cfg.paths.log_dir = str(log_dir)
        out = str(output_dir) if output_dir is not None else str(Path(str(OmegaConf.select(cfg, "paths.log_dir", default="logs"))) / "compose")
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    return cfg


def model_config(topology: str = "flat_gmm", overrides: Sequence[str] = (), data: str | None = None) -> DictConfig:
    """The resolved ``model`` node of ``train`` composed with ``model=<topology>`` (and
    ``data=<data>``, which sets ``input_shape``) and ``overrides`` (``"model.K=49"``,
    ``"model.layers.1.K=64"``). Unknown topologies give a one-line ConfigError naming the known ones."""
    if topology not in known_topologies():
        raise ConfigError(f"unknown topology {topology!r}; known topologies: {', '.join(known_topologies())}")
    cfg = compose("train", [f"model={topology}", *([f"data={data}"] if data else []), *overrides])
    return OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))  # resolved, detached from the task config


def build_model(topology: str = "flat_gmm", overrides: Sequence[str] = (), data: str | None = None):
    """A :class:`dcgmm.module.DCGMMModule` of :func:`model_config` (Hydra ``instantiate``)."""
    from dcgmm.utils import instantiate

    return instantiate(model_config(topology, overrides, data))
