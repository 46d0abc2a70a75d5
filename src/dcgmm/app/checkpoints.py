"""Loading a trained DCGMM from a Lightning checkpoint, with one-line errors for bad paths."""

from __future__ import annotations

from pathlib import Path

import torch

from dcgmm.app.module import DCGMMModule
from dcgmm.errors import ConfigError


def load_module(ckpt_path: str | Path | None, map_location: str | torch.device = "cpu"):
    """Rebuild a :class:`~dcgmm.app.module.DCGMMModule` from a checkpoint written by ``train.py``.

    The checkpoint alone is enough: the module's hyper-parameters (topology included) are saved
    in it. Raises :class:`ConfigError` when the path is missing, is not a file Lightning can read,
    or holds a checkpoint of another model.
    """
    if ckpt_path in (None, ""):
        raise ConfigError("ckpt_path is required: pass ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; point it at a .ckpt file written by train.py")
    return module_from_checkpoint(read_checkpoint(path, map_location), path).to(map_location).eval()


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict in ``path``, or a one-line ConfigError when it cannot be read."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({type(err).__name__}); use a .ckpt written by train.py") from None


def module_from_checkpoint(checkpoint, path: Path):
    """The :class:`~dcgmm.app.module.DCGMMModule` a loaded checkpoint holds (topology and weights)."""

    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "layers" not in hparams or not isinstance(state, dict):
        raise ConfigError(f"ckpt_path={path} is not a checkpoint of a DCGMM model (no topology or weights in it)")
    module = DCGMMModule(**{k: v for k, v in hparams.items() if k != "_instantiator"})
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"ckpt_path={path}: weights do not fit the saved topology ({first})") from None
    module.on_load_checkpoint(checkpoint)
    return module


def describe_topology(stack) -> str:
    """A stack in one line, e.g. ``folding 8x8/2 > gmm K=49 > folding 11x11/1 > gmm K=36 > classifier``."""
    parts = []
    for layer in stack.layers:
        detail = ""
        if hasattr(layer, "kernel_size"):
            (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
            detail = f" {kh}x{kw}/{sh}" if sh == sw else f" {kh}x{kw}/{sh}x{sw}"
        elif layer.is_density:
            detail = f" K={layer.K}"
        parts.append(layer.kind + detail)
    return " > ".join(parts)


def check_checkpoint_fits(ckpt_path: str | Path, module) -> None:
    """One-line ConfigError, before training resumes, when the checkpoint holds another topology
    than the configured ``module`` (a weight missing, extra, or of another shape), naming both."""
    path = Path(str(ckpt_path)).expanduser()
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"ckpt_path={path} is not a checkpoint of a DCGMM model (no weights in it)")
    mine = {name: tuple(value.shape) for name, value in module.state_dict().items() if hasattr(value, "shape")}
    theirs = {name: tuple(value.shape) for name, value in state.items() if hasattr(value, "shape")}
    if mine == theirs:
        return
    hparams = checkpoint.get("hyper_parameters") or {}
    try:
        saved_text = describe_topology(module_from_checkpoint(checkpoint, path).stack)  # no second read
    except ConfigError:
        saved_text = f"{len(hparams.get('layers') or [])} layers"
    raise ConfigError(
        f"ckpt_path={path} holds another topology ({saved_text}) than the configured model "
        f"({describe_topology(module.stack)}); pick the model= that trained it, or drop ckpt_path to start afresh"
    )
