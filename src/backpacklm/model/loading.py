"""Load a trained model (and its tokenizer) from a model directory or a training run directory, strictly."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BackpackError, first_line


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory holds config.json; a run directory points at its latest checkpoint in latest.json."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / "latest.json").is_file():
        checkpoint = path / read_run_manifest(path / "latest.json")
        if not (checkpoint / "config.json").is_file():  # a manifest points at a checkpoint, not at another run
            raise BackpackError(f"{path / 'latest.json'} names {checkpoint}, which is not a model directory")
        return checkpoint
    if not path.exists():
        raise BackpackError(f"model directory {path} does not exist")
    raise BackpackError(f"{path} is not a model directory (no config.json) nor a training run (no latest.json)")


def read_run_manifest(manifest: Path) -> str:
    """The checkpoint folder name in a run's latest.json ({"checkpoint": "step-0000400", ...}); a manifest that is
    unreadable or names no folder is a BackpackError."""
    try:
        latest = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BackpackError(f"{manifest} is not a valid run manifest ({err})") from None
    if not isinstance(latest, dict) or not isinstance(latest.get("checkpoint"), str):
        raise BackpackError(f"{manifest} is not a valid run manifest (no \"checkpoint\" folder name)")
    return latest["checkpoint"]


def max_positions(model) -> int | None:
    """The longest input the model takes (GPT-2's n_positions, Llama's max_position_embeddings, n_ctx), or None when
    its positions are unbounded (relative positions, e.g. T5)."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def require_causal_lm(model, command: str) -> None:
    """BackpackError for an encoder-decoder model (T5), which `command` cannot run: it reads one token stream."""
    if getattr(model.config, "is_encoder_decoder", False):
        raise BackpackError(f"{command} needs a causal (decoder-only) LM; this is an encoder-decoder "
                            f"{type(model).__name__}")


def read_model_config(path: str | Path) -> dict:
    """config.json of a model directory (or run) as a dict; BackpackError if it is unreadable, not a JSON object, or
    in the official backpack-gpt2 layout (which needs `convert --official` first; transformers blamed its own
    version for not knowing the type)."""
    from .official import OFFICIAL_MODEL_TYPE

    config_file = resolve_model_dir(path) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BackpackError(f"cannot read {config_file}: {err}") from None
    if not isinstance(config, dict):
        raise BackpackError(f"{config_file} is not a model config (a JSON object)")
    if config.get("model_type") == OFFICIAL_MODEL_TYPE:
        raise BackpackError(f"{config_file.parent} is in the official {OFFICIAL_MODEL_TYPE} layout; import it first "
                            f"with `backpack convert --official {config_file.parent} --out DIR`")
    return config


def is_encoder_decoder_dir(path: str | Path) -> bool:
    """Whether the model directory (or run) holds an encoder-decoder model (e.g. T5), from its config.json."""
    return bool(read_model_config(path).get("is_encoder_decoder", False))


def check_device(device: str) -> str:
    """`device` if torch can use it on this machine: "cpu", "cuda", "cuda:1", "mps", ..., else BackpackError."""
    import torch

    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError):
        raise BackpackError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if kind.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise BackpackError(f"device {device!r} requested, but CUDA is not available on this machine")
        if kind.index is not None and kind.index >= count:
            raise BackpackError(f"device {device!r} requested, but this machine has {count} CUDA device(s)")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise BackpackError(f"device {device!r} requested, but MPS is not available on this machine")
    return device


def check_finite(model, where: Path) -> None:
    """BackpackError naming the first weight that holds NaN or infinity (a corrupted or diverged checkpoint).
    Weights accelerate left on the meta device (offloaded with device_map) hold no values here and are skipped."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
            raise BackpackError(f"checkpoint in {where} has NaN or infinite weights ({name}); it is corrupted or "
                                "its training diverged")


def _describe_key(entry) -> str:
    """A loading-info entry: a name, or (name, shape in the file, shape the config gives) for a mis-shaped weight."""
    if isinstance(entry, tuple) and len(entry) == 3:
        name, stored, expected = entry
        return f"{name} is {list(stored)} in the file, {list(expected)} by the config"
    return str(entry)


def load_model(path: str | Path, device: str = "cpu", **kwargs):
    """(model, tokenizer or None) in eval mode: a causal LM, or a sequence-to-sequence LM (T5) when the config says
    is_encoder_decoder. Missing, unexpected or mis-shaped weights are an error, never silently re-initialized."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if device is not None:
        check_device(device)
    model_dir = resolve_model_dir(path)
    auto = AutoModelForSeq2SeqLM if is_encoder_decoder_dir(model_dir) else AutoModelForCausalLM
    try:
        # mis-shaped weights are listed in `info` (and rejected below, naming them) rather than raised without names
        model, info = auto.from_pretrained(model_dir, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except BackpackError:
        raise
    except Exception as err:  # corrupted / truncated / foreign files surface as many exception types
        raise BackpackError(f"cannot load a model from {model_dir}: {first_line(err)}") from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(_describe_key, sorted(v, key=str)[:3]))}"
                           for k, v in problems.items())
        raise BackpackError(f"checkpoint in {model_dir} does not match its config ({detail})")
    check_finite(model, model_dir)
    model.to(device).eval()
    return model, load_tokenizer_if_present(model_dir)


TOKENIZER_MARKERS = ("tokenizer.json", "vocab.json", "tokenizer_config.json")  # any of them: the folder has a tokenizer


def load_tokenizer_if_present(model_dir: Path):
    from transformers import AutoTokenizer

    if not any((model_dir / name).is_file() for name in TOKENIZER_MARKERS):
        return None
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:
        raise BackpackError(f"cannot load the tokenizer in {model_dir}: {first_line(err)}") from None
