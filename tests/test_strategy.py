"""The DDP strategy of conf/trainer/ddp*.yaml builds under any torch (dcgmm.app.strategy)."""

import inspect

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from dcgmm.app.strategy import buffer_sync_argument
from tests.conftest import ROOT


class OlderDDP:  # the signature of DistributedDataParallel before torch 2.13
    def __init__(self, module, device_ids=None, broadcast_buffers=True, find_unused_parameters=False):
        pass


class NewerDDP:
    def __init__(self, module, device_ids=None, broadcast_buffers=None, forward_sync_buffers=None):
        pass


@pytest.mark.parametrize("ddp_class, name", [(OlderDDP, "broadcast_buffers"), (NewerDDP, "forward_sync_buffers")])
def test_the_buffer_switch_is_the_keyword_that_torch_version_has(ddp_class, name):
    assert buffer_sync_argument(False, ddp_class) == {name: False}
    assert buffer_sync_argument(True, ddp_class) == {name: True}


@pytest.mark.parametrize("trainer", ["ddp", "ddp_sim"])
def test_each_ddp_config_hands_ddp_only_keywords_it_accepts(trainer):
    """What the strategy passes on to DistributedDataParallel (its ``_ddp_kwargs``) are keywords of the
    installed torch's DistributedDataParallel, with the per-forward buffer broadcast off."""
    strategy = instantiate(OmegaConf.load(ROOT / "conf" / "trainer" / f"{trainer}.yaml").strategy)
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    assert set(strategy._ddp_kwargs) <= set(accepted)
    assert strategy._ddp_kwargs == buffer_sync_argument(False)
