"""Lightning's DDP strategy for this project's modules, across torch versions (docs/design.md section 6).

DDP broadcasts a module's registered buffers from rank 0 at every forward unless told not to. The
DCGMM stack's only buffers are the smoothing kernels, rebuilt from the same annealing decisions on
every process (the training loop's state is averaged over processes and kept out of buffers), so
that broadcast only costs a collective per step. torch 2.13 calls the switch ``forward_sync_buffers``
(``broadcast_buffers`` is deprecated there); earlier versions know only ``broadcast_buffers``, which
is also what stops the broadcast at the start (harmless here: every process builds the same kernels).
"""

from __future__ import annotations

import inspect
from typing import Any

from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel


def buffer_sync_argument(sync_every_forward: bool, ddp_class: type = DistributedDataParallel) -> dict[str, bool]:
    """The ``ddp_class`` keyword that turns the per-forward buffer broadcast on or off in the
    installed torch: ``{"forward_sync_buffers": ...}`` where it exists, else ``{"broadcast_buffers": ...}``."""
    known = inspect.signature(ddp_class.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    return {name: bool(sync_every_forward)}


def ddp_strategy(sync_buffers_every_forward: bool = False, **kwargs: Any) -> DDPStrategy:
    """``DDPStrategy(**kwargs)`` with the buffer broadcast at every forward off (default) or on,
    spelled for the installed torch (``conf/trainer/ddp.yaml``, ``ddp_sim.yaml``)."""
    return DDPStrategy(**buffer_sync_argument(sync_buffers_every_forward), **kwargs)
