"""One way from the config files to objects (docs/design.md section 9).

The Hydra configs ship inside the package (``src/dcgmm/conf``; a checkout's ``conf/`` links
there), so an installed package finds them. :func:`compose` composes a task's config with
override strings exactly as ``python train.py OVERRIDES`` does, without running Hydra's job
machinery (nothing is written); :func:`model_config` is the ``model`` node of such a
composition; :func:`build_model` instantiates it. The Python API, the benchmarks, the results
pipeline and the tests all go through these, so a topology means the same everywhere.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from dcgmm.app.locations import conf_dir, project_root
from dcgmm.app.module import DCGMMModule
from dcgmm.app.utils import instantiate, prepare_environment
from dcgmm.data.arrays import is_int
from dcgmm.errors import ConfigError

__all__ = ["build_model", "compose", "known_topologies", "model_config"]

def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    failure: str | None = None,
) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` as the command line would.

    Args:
        config_name: ``train``, ``evaluate`` or ``sample``.
        overrides: Hydra override strings, e.g. ``["model=dcgmm2", "model.layers.1.K=64"]``.
        output_dir: the run folder (``paths.output_dir``); ``None``: ``<log_dir>/compose``. Not created.
        root_dir, data_dir, log_dir: ``paths.*``; ``None`` keeps the config's (``root_dir``:
            :func:`project_root`).
        failure: what the one-line error of a failed composition starts with (default ``cannot
            compose <name> with <overrides>``), before Hydra's first line.

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

    prepare_environment()
    name = config_name if config_name.endswith(".yaml") else f"{config_name}.yaml"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name=name, return_hydra_config=True, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        first = _first_line(err)
        raise ConfigError(f"{failure or f'cannot compose {name} with {list(overrides)}'}: {first}") from None
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
    """A :class:`dcgmm.app.module.DCGMMModule` of :func:`model_config` (Hydra ``instantiate``)."""

    return instantiate(model_config(topology, overrides, data))


# ------------------------------------------------------------------------------- the estimator's topologies
# The paper's topology letters (README and docs/model.md, "Topologies") as aliases of the config names.
TOPOLOGY_ALIASES = {
    "A": "flat_gmm", "flat": "flat_gmm", "B": "dcgmm2", "C": "dcgmm2_pool", "D": "dcgmm3_pool",
    "E": "dcgmm3", "F": "dcgmm4", "G": "dcgmm4_pool",
}
# the inverse: a config name's paper letter (dcgmm2_pool -> C)
TOPOLOGY_LETTERS = {name: letter for letter, name in TOPOLOGY_ALIASES.items() if len(letter) == 1}
MODULE_TARGET = "dcgmm.app.module.DCGMMModule"


def model_options() -> tuple[str, ...]:
    """The model-wide options of :class:`~dcgmm.app.module.DCGMMModule` (its constructor arguments other
    than the topology): ``K``, ``lr``, ..., ``optimizer``, ``compile``, ``annealing``."""

    return tuple(name for name in inspect.signature(DCGMMModule.__init__).parameters if name not in ("self", "layers"))


def load_topology(name: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """A model config as a plain dict: ``conf/model/<name>.yaml`` composed as ``model=<name>`` on
    the command line would (:func:`dcgmm.app.config.model_config`, with ``overrides`` such as
    ``"model.layers.1.K=64"``), a paper letter ``A``-``G``, or the path of a standalone YAML file.
    Unknown names raise a one-line ConfigError listing the known ones."""
    text = str(name)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"topology file {path} does not exist")
        if path.resolve().parent == (conf_dir() / "model").resolve() and path.stem in known_topologies():
            return load_topology(path.stem, overrides)  # a shipped file: composed with its defaults
        try:
            node = OmegaConf.load(path)
            if "defaults" in node:
                raise ConfigError(
                    f"topology file {path} uses a Hydra defaults list; put it into a config folder's model/ "
                    "(DCGMM_CONF_DIR) and pass its name, or write every key into the file"
                )
            config = OmegaConf.to_container(node, resolve=True) if not overrides else None
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - YAML or interpolation errors are the same user error
            first = _first_line(err)
            raise ConfigError(f"topology file {path} cannot be read: {first}") from None
        if not isinstance(node, DictConfig):
            raise ConfigError(f"topology file {path} must hold a mapping with a 'layers' list")
        return config if config is not None else compose_standalone(node, overrides)
    topology = TOPOLOGY_ALIASES.get(text, text)
    if topology not in known_topologies():
        raise ConfigError(
            f"unknown topology {text!r}; known topologies: {', '.join(known_topologies())} "
            f"(or the paper's letters {', '.join(k for k in TOPOLOGY_ALIASES if len(k) == 1)})"
        )
    return OmegaConf.to_container(model_config(topology, [_model_override(o) for o in overrides]), resolve=True)


def _model_override(override: str) -> str:
    """``"layers.1.K=64"`` or ``"model.layers.1.K=64"`` -> ``"model.layers.1.K=64"``."""
    text = str(override).strip()
    if "=" not in text:
        raise ConfigError(f"override {override!r} must look like the command line's, e.g. model.layers.1.K=64")
    body = text.lstrip("+~")
    prefix = text[: len(text) - len(body)]
    return prefix + (body if body.startswith("model.") else f"model.{body}")


STANDALONE = "_standalone"  # the model option a standalone topology is composed as


def compose_standalone(node, overrides: Sequence[str]) -> dict:
    """A standalone model config (a mapping, or a YAML file's), composed with ``overrides`` as the
    command line composes ``model=<name> OVERRIDES``: the node is stored as the model option
    ``_standalone`` (Hydra's config store) and :func:`compose` builds ``train`` with it, so the
    override grammar and its errors are the command line's (``+key=`` adds a key, ``++key=`` sets
    one whether or not it exists)."""
    from hydra.core.config_store import ConfigStore

    strings = [_model_override(o) for o in overrides]
    store = ConfigStore.instance()
    store.store(group="model", name=STANDALONE, node=OmegaConf.create(node))
    try:
        cfg = compose("train", [f"model={STANDALONE}", *strings], failure=f"cannot apply {strings} to the topology")
    except ConfigError as err:
        if "Could not override" not in str(err):
            raise
        raise ConfigError(f"{err} (a key the topology does not hold needs a leading +, as on the command line)") from None
    finally:
        store.repo.get("model", {}).pop(f"{STANDALONE}.yaml", None)  # no stale option left for later compositions
    return OmegaConf.to_container(cfg.model, resolve=True)


def _layer_override_strings(layer_overrides: Mapping | None, layers: int | None) -> list[str]:
    """``{1: {"K": 64}}`` -> ``["model.layers.1.K=64"]``: the command line's override strings."""
    import json

    out = []
    for index, changes in dict(layer_overrides or {}).items():
        if not is_int(index) or (layers is not None and not 0 <= index < layers):
            shown = f"; the topology has layers 0..{layers - 1}" if layers is not None else ""
            raise ConfigError(f"layer_overrides: layer {index!r} does not exist{shown}")
        if not isinstance(changes, Mapping):
            raise ConfigError(f"layer_overrides[{index}] must be a mapping such as {{'K': 64}}, got {changes!r}")
        for key, value in changes.items():
            out.append(f"++model.layers.{int(index)}.{key}={json.dumps(value)}")
    return out


PARTIALS = {"optimizer": "torch.optim.SGD", "annealing": "dcgmm.training.annealing.Annealing"}  # key -> the module's default


def _own_defaults(func: Callable, keywords: Mapping) -> bool:
    """True when every keyword equals the default of ``func``'s parameter of that name."""
    parameters = inspect.signature(func).parameters
    return all(name in parameters and parameters[name].default == value for name, value in keywords.items())


def _partial(key: str, value: Any) -> Callable | None:
    """A factory of a model config (``optimizer``, ``annealing``): ``None`` for the module's
    default, a callable as is, a Hydra ``_target_`` mapping instantiated (``_partial_: true``)."""
    if value is None or callable(value):
        return value
    if isinstance(value, Mapping):
        from hydra.utils import instantiate

        value = dict(value)
        partial = instantiate(value, _partial_=True)
        if value.get("_target_") == PARTIALS[key] and not partial.args and _own_defaults(partial.func, partial.keywords):
            return None  # the module's default, kept out of the checkpoint's hyper-parameters
        return partial
    raise ConfigError(f"{key}={value!r} must be None, a callable, or a {{_target_: ...}} mapping")


def module_arguments(
    topology, input_shape=None, classifier: bool = True, layer_overrides: Mapping | None = None,
    options: Mapping | None = None, overrides: Sequence[str] = (),
) -> tuple[str, dict]:
    """``(topology name, DCGMMModule keyword arguments)`` of a topology given as a config name (a
    paper letter, a YAML path), a list of layer dicts or a model config mapping, with ``overrides``
    (and ``layer_overrides``, turned into the same strings) applied as on the command line,
    ``options`` (model-wide values such as ``K=49``) on top, and ``classifier=False`` dropping the
    classifier layer. What :class:`dcgmm.app.api.DCGMMEstimator` builds its module from."""
    options = dict(options or {})
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(f"overrides={overrides!r} must be a list of strings such as ['model.layers.1.K=64']")
    if isinstance(topology, (str, os.PathLike)):
        name = str(topology)
        config = load_topology(topology, overrides)  # one composition; layer_overrides go on top
        if layer_overrides:
            strings = _layer_override_strings(layer_overrides, len(config.get("layers") or []))
            config = compose_standalone(config, strings)
    elif isinstance(topology, (Mapping, Sequence)):
        name = "custom"
        base = dict(topology) if isinstance(topology, Mapping) else {"layers": list(topology)}
        layers = len(base["layers"]) if isinstance(base.get("layers"), list) else None
        strings = [*overrides, *_layer_override_strings(layer_overrides, layers)]
        if strings:
            factories = {key: base.pop(key) for key in PARTIALS if callable(base.get(key))}
            try:
                node = OmegaConf.create(base)
            except Exception as err:  # noqa: BLE001 - values OmegaConf cannot hold are a user error
                raise ConfigError(f"topology {name}: {_first_line(err)}") from None
            base = {**compose_standalone(node, strings), **factories}
        config = base
    else:
        raise ConfigError(f"topology={topology!r} must be a config name (e.g. 'flat_gmm'), a list of layer dicts or a model config mapping")
    if not isinstance(config, Mapping):
        raise ConfigError(f"topology {name} must be a mapping with a 'layers' list")
    config = dict(config)
    factories = {key: config.pop(key) for key in PARTIALS if callable(config.get(key))}  # OmegaConf holds no callables
    try:
        config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)  # deep copy, plain types
    except Exception as err:  # noqa: BLE001 - unsupported values are the same user error
        first = _first_line(err)
        raise ConfigError(f"topology {name}: {first}") from None
    config.update(factories)
    target = config.pop("_target_", MODULE_TARGET)
    if target != MODULE_TARGET:
        raise ConfigError(f"topology {name} builds {target}; the estimator builds {MODULE_TARGET} models only")
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(spec, dict) for spec in layers):
        raise ConfigError(f"topology {name}: 'layers' must be a non-empty list of layer dicts such as {{kind: gmm, K: 25}}")
    if not classifier:
        layers = [spec for spec in layers if spec.get("kind") != "classifier"]
    config["layers"] = layers
    known = model_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"unknown model option(s) {', '.join(unknown)}; known options: {', '.join(known)} (per layer: overrides=['model.layers.<i>.K=64'])")
    config.update(options)
    if input_shape is not None:
        if isinstance(input_shape, (str, bytes)) or not hasattr(input_shape, "__iter__") or not all(is_int(v) for v in input_shape):
            raise ConfigError(f"input_shape={input_shape!r} must be (channels, height, width), e.g. (1, 28, 28)")
        config["input_shape"] = [int(v) for v in input_shape]
    unknown = sorted(set(config) - set(known) - {"layers"})
    if unknown:
        raise ConfigError(f"topology {name}: unknown key(s) {', '.join(unknown)}; known keys: layers, {', '.join(known)}")
    for key in PARTIALS:
        config[key] = _partial(key, config.get(key))
    return name, config
