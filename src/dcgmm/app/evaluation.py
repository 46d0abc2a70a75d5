"""The evaluation task: test metrics of a trained checkpoint (``python evaluate.py ckpt_path=...``).

Metrics (docs/design.md section 4), all on the test split of ``data`` (``data.classes`` applies):

* from the module: ``test/loss`` (sum over GMM layers of minus each layer's mean objective; for a
  stack with one GMM layer, e.g. the flat GMM, the top layer's loss), ``test/L<i>_gmm/loss`` per
  GMM layer, ``test/loglik`` and ``test/bound`` (top layer, nats per image), ``test/acc`` (the
  classifier, when there is one), ``test/bpd`` (bits/dim, for pixel-density stacks: flat GMM);
* from :class:`~dcgmm.app.callbacks.TopLayerMetrics` (``callbacks=eval``): ``test/top/loss`` (minus
  the top GMM layer's mean objective, whatever the topology) and ``test/cluster/purity``,
  ``/nmi``, ``/ari``, and ``/hungarian_acc`` when the top layer's K equals the number of classes.

The metrics are printed as a table, logged to the configured loggers (none by default) and written
to ``<output_dir>/metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from dcgmm.app.checkpoints import load_module
from dcgmm.app.utils import apply_extras, build_trainer, instantiate, instantiate_group, task_wrapper
from dcgmm.errors import ConfigError

log = logging.getLogger("dcgmm")

METRICS_JSON = "metrics.json"


def check_input_shape(model_shape, data_shape, data_name: str) -> None:
    """One-line ConfigError when a checkpoint's ``input_shape`` differs from the data's images."""
    if tuple(int(v) for v in model_shape) != tuple(int(v) for v in data_shape):
        raise ConfigError(
            f"evaluating a checkpoint trained on another image size: the model expects input_shape="
            f"{list(model_shape)}, data={data_name} has images of shape {list(data_shape)}"
        )


def metrics_table(metrics: dict[str, float], title: str = "") -> str:
    """The metrics as a fixed-width two-column text table."""
    width = max([len(k) for k in metrics] + [len("metric")])
    lines = [title] if title else []
    lines += [f"{'metric':<{width}}  {'value':>14}", "-" * (width + 16)]
    for name, value in metrics.items():
        text = f"{value:>14.6g}" if isinstance(value, float) and math.isfinite(value) else f"{value!s:>14}"
        lines.append(f"{name:<{width}}  {text}")
    return "\n".join(lines)


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Test a checkpoint (``cfg.ckpt_path``, required) on ``cfg.data``'s test split.

    Bad input fails with a one-line :class:`ConfigError` / :class:`~dcgmm.data.DataError` before
    anything runs: no ``ckpt_path``, a missing file, a file that is not a DCGMM checkpoint, data
    whose image shape differs from the checkpoint's ``input_shape``.

    Returns:
        the ``test/*`` metrics as floats, and the objects built (for tests and notebooks).
    """
    apply_extras(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)  # bits/dim draws the dequantisation noise

    model = load_module(cfg.get("ckpt_path"))
    log.info(f"Loaded {cfg.ckpt_path}; DCGMM stack:\n" + model.stack.summary_table())
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    check_input_shape(model.stack.input_shape, datamodule.image_shape, cfg.data.get("name", cfg.data._target_))

    topology = {k: v for k, v in model.hparams.items() if k != "optimizer"}  # the checkpoint's model
    trainer, loggers = build_trainer(cfg, model, callbacks, {"model": topology})
    objects = dict(cfg=cfg, datamodule=datamodule, model=model, callbacks=callbacks, logger=loggers, trainer=trainer)

    log.info("Starting testing")
    trainer.test(model=model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("test/")}

    top = model.stack.top_gmm
    title = (
        f"{cfg.ckpt_path} on {cfg.data.get('name', '?')} test"
        + (f" (classes {list(datamodule.classes)})" if getattr(datamodule, "classes", None) else "")
        + f"; top GMM layer {top.name}, K={top.K}"
    )
    table = metrics_table(metrics, title)
    if trainer.is_global_zero:
        print(table, flush=True)  # stdout only: the metrics are in metrics.json and the loggers
        output_dir = cfg.get("paths", {}).get("output_dir")
        if output_dir:
            result = dict(
                ckpt_path=str(cfg.ckpt_path),
                data=cfg.data.get("name"),
                classes=list(datamodule.classes) if getattr(datamodule, "classes", None) else None,
                top_gmm_layer=top.name,
                K=top.K,
                pixel_density=model.stack.is_pixel_density,
                metrics=metrics,
            )
            path = Path(output_dir) / METRICS_JSON
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + "\n")
            log.info(f"Metrics written to {path}")
    return metrics, objects
