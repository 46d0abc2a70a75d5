"""Save every process's parameters at the end of training (to check data-parallel consistency)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class ParameterSnapshot(Callback):
    """Writes ``<folder>/params_rank<r>.pt`` (the module's parameters and annealing states) on
    every process at the end of ``fit``; under DDP the files of all ranks must be identical."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "params": {name: p.detach().cpu().clone() for name, p in pl_module.named_parameters()},
            "schedules": {i: s.state_dict() for i, s in getattr(pl_module, "schedules", {}).items()},
            "world_size": trainer.world_size,
        }
        torch.save(state, self.folder / f"params_rank{trainer.global_rank}.pt")
