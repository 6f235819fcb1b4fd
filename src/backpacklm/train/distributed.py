"""Data-parallel set-up under `torchrun` (gloo on CPU, nccl on GPU); a no-op for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Distributed:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; picks the device and the matching process-group backend."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(env: Distributed) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: Distributed) -> None:
    if env.enabled:
        dist.barrier()


def mean_across(env: Distributed, value: float) -> float:
    if not env.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return tensor.item() / env.world_size


def gather_rng_states(env: Distributed) -> dict[str, torch.Tensor]:
    """Every rank's dropout stream: `rng.torch.{rank}` (CPU generator) and, on a GPU, `rng.cuda.{rank}` (that
    device's generator, which drives dropout there). Called on all ranks together."""
    local = {"torch": torch.get_rng_state()}
    if env.device.startswith("cuda"):
        local["cuda"] = torch.cuda.get_rng_state(env.device).cpu()
    states: list = [local]
    if env.enabled:
        states = [None] * env.world_size
        dist.all_gather_object(states, local)
    return {f"rng.{name}.{rank}": state for rank, per_rank in enumerate(states) for name, state in per_rank.items()}


def restore_rng_states(env: Distributed, saved: dict[str, torch.Tensor]) -> None:
    """Sets this rank's generators from `gather_rng_states`' keys (CUDA's only where saved and running on a GPU)."""
    torch.set_rng_state(saved[f"rng.torch.{env.rank}"])
    cuda_key = f"rng.cuda.{env.rank}"
    if cuda_key in saved and env.device.startswith("cuda"):
        torch.cuda.set_rng_state(saved[cuda_key], env.device)
