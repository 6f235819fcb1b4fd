"""Atomic, resumable checkpoints.

A run directory holds complete checkpoints and a manifest:
    run/step-0000400/    Hugging Face model directory (config.json, model.safetensors, tokenizer files)
                         + training_state.json (step, schedule, metrics) + training_state.safetensors (optimizer, RNGs)
    run/latest.json      {"checkpoint": "step-0000400", "step": 400}, replaced atomically after the directory is complete
    run/model ->         symlink to the latest checkpoint, for tools that want a plain model directory
A checkpoint is first written to a hidden temporary directory and renamed into place, so an interruption at any
moment leaves the previous checkpoint intact and the manifest pointing at it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import write_json_atomic
from ..errors import BackpackError
from ..model.loading import read_run_manifest

STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": value.detach().cpu().contiguous()
        for index, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, state["param_groups"]


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    # JSON turns tuples (AdamW's betas) into lists, and AdamW's arithmetic differs in the last bit for lists
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in param_groups]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: Path, step: int, model, tokenizer, optimizer, train_state: dict, extra_tensors: dict, keep: int = 2
) -> Path:
    """Write checkpoint `step` atomically, point the manifest at it, and keep only the newest `keep` checkpoints."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp, final = run_dir / f".{name}.tmp", run_dir / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    optimizer_tensors, param_groups = _optimizer_to_flat(optimizer)
    save_file({**optimizer_tensors, **extra_tensors}, tmp / STATE_TENSORS)
    write_json_atomic(tmp / STATE_JSON, {**train_state, "step": step, "optimizer_param_groups": param_groups})
    if final.exists():  # the same step saved again (e.g. resumed and stopped at once): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    write_json_atomic(run_dir / "latest.json", {"checkpoint": name, "step": step})
    link_tmp = run_dir / ".model.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(name, link_tmp)
    os.replace(link_tmp, run_dir / "model")
    for old in sorted(run_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    manifest = Path(run_dir) / "latest.json"
    if not manifest.is_file():
        return None
    checkpoint = Path(run_dir) / read_run_manifest(manifest)
    if not checkpoint.is_dir():
        raise BackpackError(f"{manifest} points at {checkpoint.name}, which is missing")
    return checkpoint


def read_state_json(checkpoint: Path) -> dict:
    """The training_state.json of a checkpoint directory (step, schedule, run settings, metrics)."""
    path = Path(checkpoint) / STATE_JSON
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackpackError(f"{checkpoint} has no training state ({STATE_JSON} missing)") from None
    except (ValueError, OSError) as err:
        raise BackpackError(f"training state in {checkpoint} is corrupted or truncated ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("optimizer_param_groups"), list):
        raise BackpackError(f"training state in {checkpoint} is corrupted ({STATE_JSON} is not a training state)")
    return state


def load_training_state(checkpoint: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(train_state json, extra tensors, optimizer state_dict) of a checkpoint directory."""
    train_state = read_state_json(checkpoint)
    try:
        # fresh (aligned) copies: MKL's summation order can depend on memory alignment, and resume must be bitwise
        tensors = {k: v.clone() for k, v in load_file(checkpoint / STATE_TENSORS).items()}
    except FileNotFoundError as err:
        raise BackpackError(f"{checkpoint} has no training state ({Path(err.filename).name} missing)") from None
    except (ValueError, SafetensorError, OSError) as err:
        raise BackpackError(f"training state in {checkpoint} is corrupted or truncated ({err})") from None
    optimizer_state = _optimizer_from_flat(tensors, train_state.pop("optimizer_param_groups"))
    extra = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    return train_state, extra, optimizer_state
