"""Random-state bookkeeping for resumable training: which generators a checkpoint holds, and that they come back."""

from __future__ import annotations

import torch

from backpacklm.train import distributed
from backpacklm.train.distributed import Distributed


def test_cpu_run_saves_and_restores_the_torch_generator():
    env = Distributed()
    torch.manual_seed(3)
    saved = distributed.gather_rng_states(env)
    assert set(saved) == {"rng.torch.0"}
    expected = torch.rand(4)
    distributed.restore_rng_states(env, saved)
    assert torch.equal(torch.rand(4), expected)


def test_gpu_run_also_saves_and_restores_its_device_generator(monkeypatch):
    """No GPU here: the CUDA generator calls are replaced by a recording stand-in to check the wiring."""
    device_state = {"cuda:1": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: device_state[device].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: device_state.__setitem__(device, state))
    env = Distributed(device="cuda:1")
    saved = distributed.gather_rng_states(env)
    assert set(saved) == {"rng.torch.0", "rng.cuda.0"}
    assert torch.equal(saved["rng.cuda.0"], torch.arange(8, dtype=torch.uint8))
    device_state["cuda:1"] = torch.zeros(8, dtype=torch.uint8)
    distributed.restore_rng_states(env, saved)
    assert torch.equal(device_state["cuda:1"], torch.arange(8, dtype=torch.uint8))
    distributed.restore_rng_states(Distributed(), saved)  # the same checkpoint resumed on CPU: CUDA state unused
