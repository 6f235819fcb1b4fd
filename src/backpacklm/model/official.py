"""Import and export of the official `stanfordnlp/backpack-gpt2` checkpoint layout.

The official layout is a directory with `config.json` (GPT-2 fields plus `num_senses`, `sense_intermediate_scale`)
and a plain state dict in `model.safetensors` or `pytorch_model.bin` (or a sharded `*.index.json` of either).

Name map (official -> ours). Official MLPs are GPT-2 `Conv1D`s, weights stored [in, out]; our sense-network MLPs are
`nn.Linear`s, weights [out, in], so those four matrices are transposed. The trunk is GPT-2 on both sides (no transpose).

    backpack.gpt2_model.*                               -> transformer.*
    backpack.sense_network.ln.*                         -> sense_network.ln_a.*         LN_a
    backpack.sense_network.block.ln_1.*                 -> sense_network.ln_b.*         LN_b
    backpack.sense_network.block.mlp.c_{fc,proj}.*      -> sense_network.mlp.c_{fc,proj}.*        FFN_1 (W transposed)
    backpack.sense_network.block.ln_2.*                 -> sense_network.ln_c.*         LN_c
    backpack.sense_network.final_mlp.c_{fc,proj}.*      -> sense_network.final_mlp.c_{fc,proj}.*  FFN_2 (W transposed)
    backpack.sense_weight_net.c_attn.*                  -> sense_weights.c_attn.*       (nn.Linear on both sides)

Aliases of tied matrices (`backpack.word_embeddings.weight`, `lm_head.weight` = wte; `backpack.position_embeddings.weight`
= wpe) may be present and must then equal what they alias. `h.{i}.attn.bias` / `h.{i}.attn.masked_bias` buffers are
ignored. Anything else missing, unexpected or mis-shaped is a BackpackError naming the key.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..atomic import replacing
from ..checks import check
from ..errors import BackpackError, first_line
from .config import BackpackConfig, check_fits_in_memory
from .modeling_backpack import BackpackForCausalLM

OFFICIAL_MODEL_TYPE = "backpack-gpt2"
OFFICIAL_ARCHITECTURE = "BackpackGPT2LMHeadModel"

# GPT-2 config fields carried across in both directions (anything else in an official config.json is ignored).
GPT2_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "scale_attn_weights", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
    "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
)
SENSE_FIELDS = ("num_senses", "sense_intermediate_scale")
# The official sense MLPs apply config.activation_function; ours always apply tanh-approximated GELU.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

_TRUNK_LAYER_PARAMS = (
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
)
_SENSE_PARAMS = (  # (official suffix, our suffix, transpose)
    ("sense_network.ln.weight", "sense_network.ln_a.weight", False),
    ("sense_network.ln.bias", "sense_network.ln_a.bias", False),
    ("sense_network.block.ln_1.weight", "sense_network.ln_b.weight", False),
    ("sense_network.block.ln_1.bias", "sense_network.ln_b.bias", False),
    ("sense_network.block.mlp.c_fc.weight", "sense_network.mlp.c_fc.weight", True),
    ("sense_network.block.mlp.c_fc.bias", "sense_network.mlp.c_fc.bias", False),
    ("sense_network.block.mlp.c_proj.weight", "sense_network.mlp.c_proj.weight", True),
    ("sense_network.block.mlp.c_proj.bias", "sense_network.mlp.c_proj.bias", False),
    ("sense_network.block.ln_2.weight", "sense_network.ln_c.weight", False),
    ("sense_network.block.ln_2.bias", "sense_network.ln_c.bias", False),
    ("sense_network.final_mlp.c_fc.weight", "sense_network.final_mlp.c_fc.weight", True),
    ("sense_network.final_mlp.c_fc.bias", "sense_network.final_mlp.c_fc.bias", False),
    ("sense_network.final_mlp.c_proj.weight", "sense_network.final_mlp.c_proj.weight", True),
    ("sense_network.final_mlp.c_proj.bias", "sense_network.final_mlp.c_proj.bias", False),
    ("sense_weight_net.c_attn.weight", "sense_weights.c_attn.weight", False),
    ("sense_weight_net.c_attn.bias", "sense_weights.c_attn.bias", False),
)
# alias -> the official key it must equal
ALIASES = {
    "backpack.word_embeddings.weight": "backpack.gpt2_model.wte.weight",
    "backpack.position_embeddings.weight": "backpack.gpt2_model.wpe.weight",
    "lm_head.weight": "backpack.gpt2_model.wte.weight",
}
_IGNORED = re.compile(r"backpack\.gpt2_model\.h\.(\d+)\.attn\.(bias|masked_bias)")


def _name_map(n_layer: int) -> list[tuple[str, str, bool]]:
    """(official name, our name, transpose) for every parameter."""
    trunk = ["wte.weight", "wpe.weight"]
    trunk += [f"h.{i}.{p}" for i in range(n_layer) for p in _TRUNK_LAYER_PARAMS]
    trunk += ["ln_f.weight", "ln_f.bias"]
    pairs = [(f"backpack.gpt2_model.{p}", f"transformer.{p}", False) for p in trunk]
    pairs += [(f"backpack.{official}", ours, transpose) for official, ours, transpose in _SENSE_PARAMS]
    return pairs


def _shape(t) -> str:
    return "[" + ", ".join(str(n) for n in t) + "]"


def _listed(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


# --- config ---------------------------------------------------------------------------------------------------------
def _check_representable(config: BackpackConfig, direction: str) -> None:
    if config.shrink_sense_inner:
        raise BackpackError(f"cannot {direction}: shrink_sense_inner=True has no equivalent in the official layout")
    if config.activation_function not in TANH_GELU_NAMES:
        raise BackpackError(
            f"cannot {direction}: activation_function={config.activation_function!r} (the official sense network "
            f"would apply it, ours always uses tanh GELU; expected one of {', '.join(TANH_GELU_NAMES)})"
        )


def official_config_to_ours(official: dict) -> BackpackConfig:
    """Our config from an official config.json dict (GPT-2 fields + num_senses + sense_intermediate_scale).

    Missing fields take the official defaults (which our config shares: V=50264, 512 positions, k=16, s=4,
    attention scaled by inverse layer index); model_type, architectures, auto_map etc. are ignored.
    """
    if not isinstance(official, dict):
        raise BackpackError(f"official config must be a JSON object, got {type(official).__name__}")
    model_type = official.get("model_type")
    if model_type == BackpackConfig.model_type:
        raise BackpackError("config has model_type 'backpack': this is already a backpacklm model, not the official layout")
    if model_type != OFFICIAL_MODEL_TYPE and "num_senses" not in official:
        raise BackpackError(
            f"not an official Backpack config (model_type {model_type!r} and no num_senses field)"
        )
    fields = {k: official[k] for k in GPT2_FIELDS + SENSE_FIELDS if k in official}
    if fields.get("activation_function") in TANH_GELU_NAMES:
        fields["activation_function"] = "gelu_pytorch_tanh"  # the same function as gelu_new, one fused kernel
    try:
        config = BackpackConfig(**fields)
    except BackpackError:
        raise
    except Exception as err:  # strict dataclass validation: wrong types or values
        raise BackpackError(f"invalid official config: {first_line(err)}") from None
    sizes = {name: getattr(config, name) for name in ("vocab_size", "n_positions", "sense_intermediate_scale")}
    if config.n_inner is not None:  # null: 4 * n_embd
        sizes["n_inner"] = config.n_inner
    for name, value in sizes.items():  # null passes the config's own checks (unset) but sizes no weights
        check(name, value, "positive_int")
    _check_representable(config, "import")
    return config


def ours_to_official_config(config: BackpackConfig, dtype: torch.dtype | None = None) -> dict:
    """The official config.json dict for our config."""
    _check_representable(config, "export")
    out = {k: getattr(config, k) for k in GPT2_FIELDS}
    out.update({k: getattr(config, k) for k in SENSE_FIELDS})
    out["activation_function"] = "gelu_new"  # the official code's name for tanh GELU
    out["model_type"] = OFFICIAL_MODEL_TYPE
    out["architectures"] = [OFFICIAL_ARCHITECTURE]
    if dtype is not None:
        out["torch_dtype"] = str(dtype).removeprefix("torch.")
    return out


# --- state dicts ----------------------------------------------------------------------------------------------------
def _our_shapes(config: BackpackConfig) -> dict[str, torch.Size]:
    check_fits_in_memory(config)  # the weights are loaded into memory next
    with torch.device("meta"):
        model = BackpackForCausalLM(config)
    return {k: v.shape for k, v in model.state_dict().items()}


def ours_to_official_state_dict(model: BackpackForCausalLM, aliases: bool = True) -> dict[str, torch.Tensor]:
    """Official-named, contiguous CPU tensors (new storage, safe to save) for our model; with the tied aliases
    (`backpack.word_embeddings.weight`, `backpack.position_embeddings.weight`, `lm_head.weight`) unless aliases=False."""
    if not isinstance(model, BackpackForCausalLM):
        raise BackpackError(f"only Backpack models have an official layout, got {type(model).__name__}")
    _check_representable(model.config, "export")
    ours = model.state_dict()
    out = {}
    for official, name, transpose in _name_map(model.config.n_layer):
        if name not in ours:  # a model whose structure differs from its config
            raise BackpackError(f"model has no parameter {name} (needed for {official})")
        tensor = ours[name].detach().to("cpu")
        out[official] = (tensor.T if transpose else tensor).contiguous().clone()
    if aliases:
        for alias, target in ALIASES.items():
            out[alias] = out[target].clone()
    return out


def official_state_dict_to_ours(sd: dict, config: BackpackConfig) -> dict[str, torch.Tensor]:
    """Our state dict from an official one, strictly: every parameter filled, every key used (aliases must equal
    what they alias; attention mask buffers are ignored), every shape as the config implies."""
    if not isinstance(sd, dict):
        raise BackpackError(f"weights file does not hold a state dict (got {type(sd).__name__})")
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise BackpackError(f"weights file is not a plain state dict: entry {key!r} is a {type(value).__name__}")
    shapes = _our_shapes(config)
    name_map = _name_map(config.n_layer)
    known = {official for official, _, _ in name_map}

    missing = [official for official, _, _ in name_map if official not in sd]
    if missing:
        raise BackpackError(f"official checkpoint is missing key {_listed(missing)}")
    unexpected = [
        k for k in sd
        if k not in known and k not in ALIASES
        and not ((m := _IGNORED.fullmatch(k)) and int(m.group(1)) < config.n_layer)
    ]
    if unexpected:
        raise BackpackError(f"official checkpoint has unexpected key {_listed(sorted(unexpected))}")

    out = {}
    for official, name, transpose in name_map:
        tensor = sd[official]
        expected = shapes[name][::-1] if transpose else shapes[name]
        if tuple(tensor.shape) != tuple(expected):
            raise BackpackError(
                f"official key {official} has shape {_shape(tensor.shape)}, expected {_shape(expected)} for this config"
            )
        if not tensor.is_floating_point():
            raise BackpackError(f"official key {official} has dtype {tensor.dtype}, expected floating point")
        out[name] = tensor.T.contiguous() if transpose else tensor
    for alias, target in ALIASES.items():
        if alias not in sd:
            continue
        if tuple(sd[alias].shape) != tuple(sd[target].shape):
            raise BackpackError(
                f"official key {alias} has shape {_shape(sd[alias].shape)}, expected {_shape(sd[target].shape)} "
                f"(it is tied to {target})"
            )
        if not torch.equal(sd[alias], sd[target].to(sd[alias].dtype)):
            raise BackpackError(f"official key {alias} differs from {target}, but the two are tied and must be equal")
    return out


# --- files ----------------------------------------------------------------------------------------------------------
def _read_weights_file(path: Path) -> dict:
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated / corrupt / pickled objects: safetensors, pickle and torch raise many types
        raise BackpackError(f"cannot read weights file {path}: {first_line(err)}") from None


def _read_weights(directory: Path) -> dict:
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _read_weights_file(path)
        try:
            weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise BackpackError(f"cannot read shard index {path}: {first_line(err)}") from None
        sd = {}
        for shard in shards:
            shard_path = directory / shard
            if Path(shard).is_absolute() or ".." in Path(shard).parts or not shard_path.is_file():
                raise BackpackError(f"shard {shard} listed in {path} is missing (or outside the checkpoint)")
            part = _read_weights_file(shard_path)
            if not isinstance(part, dict):
                raise BackpackError(f"shard {shard_path} does not hold a state dict")
            if twice := sorted(k for k in part if k in sd):  # which copy the model should get is unknowable
                raise BackpackError(f"key {_listed(twice)} appears in more than one shard of {path}")
            sd.update(part)
        return sd
    raise BackpackError(f"{directory} holds no weights ({' or '.join(n for n in WEIGHT_FILES if 'index' not in n)})")


def read_official_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.exists():
        raise BackpackError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise BackpackError(f"{directory} is not a directory")
    path = directory / "config.json"
    if not path.is_file():
        raise BackpackError(f"{directory} is not an official Backpack checkpoint (no config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BackpackError(f"cannot read {path}: {first_line(err)}") from None


def load_official(directory: str | Path) -> BackpackForCausalLM:
    """A BackpackForCausalLM (float32, eval mode) from an official-layout checkpoint directory."""
    directory = Path(directory)
    raw_config = read_official_config(directory)
    try:
        config = official_config_to_ours(raw_config)
    except BackpackError as err:
        raise BackpackError(f"{directory / 'config.json'}: {err}") from None
    try:
        ours = official_state_dict_to_ours(_read_weights(directory), config)
    except BackpackError as err:
        raise BackpackError(f"{directory}: {err}") from None
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every parameter is overwritten below (strictly), so skip the random init
        model = BackpackForCausalLM(config)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def _config_model_type(path: Path) -> str | None:
    """model_type of a config.json; None when it cannot be read as a JSON object."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def export_official(model: BackpackForCausalLM, directory: str | Path, fmt: str = "safetensors") -> list[Path]:
    """Write `model` in the official layout: config.json and model.safetensors (fmt="safetensors") or
    pytorch_model.bin (fmt="bin"), the weights including the tied aliases. Returns the paths written."""
    if fmt not in ("safetensors", "bin"):
        raise BackpackError(f"unknown weights format {fmt!r}; choose safetensors or bin")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BackpackError(f"{directory} exists and is not a directory")
    if (directory / "latest.json").is_file():
        raise BackpackError(f"{directory} is a training run (it holds latest.json); export to another directory")
    if (directory / "config.json").is_file() and _config_model_type(directory / "config.json") != OFFICIAL_MODEL_TYPE:
        raise BackpackError(f"{directory} holds a model that is not in the official layout; export to another directory")
    weights_name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    stale = [n for n in WEIGHT_FILES if n != weights_name and (directory / n).exists()]
    if stale:  # loaders pick one file by precedence; a leftover of the other format could shadow the new weights
        raise BackpackError(f"{directory} already holds {stale[0]}; remove it or export to another directory")
    sd = ours_to_official_state_dict(model)
    config = ours_to_official_config(model.config, dtype=next(iter(sd.values())).dtype)
    directory.mkdir(parents=True, exist_ok=True)

    weights_path, config_path = directory / weights_name, directory / "config.json"
    # both files are written beside their targets first; the old config.json goes before the weights are moved in
    # and the new one comes last, so a failure never leaves new weights under the old config
    with replacing(config_path) as config_tmp, replacing(weights_path) as weights_tmp:
        if fmt == "safetensors":
            from safetensors.torch import save_file

            save_file(sd, weights_tmp, metadata={"format": "pt"})
        else:
            torch.save(sd, weights_tmp)
        config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        config_path.unlink(missing_ok=True)
    return [config_path, weights_path]


# --- conversion into our layout -------------------------------------------------------------------------------------
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))


def has_tokenizer_files(directory: Path) -> bool:
    return any(all((directory / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS)


def convert_official(src_dir: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> list[Path]:
    """Official checkpoint -> our Hugging Face layout in out_dir (loads with AutoModelForCausalLM after
    `import backpacklm`), plus a GPT-2 tokenizer from tokenizer_dir, or from src_dir if it holds one.
    Returns the files written in out_dir (`_save_model_dir`: a failed save leaves out_dir as it was)."""
    from ..data.tokenizers import load_tokenizer

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BackpackError(f"{out_dir} exists and is not a directory")
    check_not_in_place(src_dir, out_dir)
    model = load_official(src_dir)  # everything is read and checked before anything is written
    tokenizer = None
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir)
    elif has_tokenizer_files(src_dir):
        tokenizer = load_tokenizer(src_dir)
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise BackpackError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {model.config.vocab_size}"
        )
    check_no_leftovers(out_dir, with_tokenizer=tokenizer is not None)
    try:
        return _save_model_dir(model, tokenizer, out_dir)
    except OSError as err:
        raise BackpackError(f"cannot write to {out_dir}: {first_line(err)}") from None


def check_no_leftovers(out_dir: Path, with_tokenizer: bool) -> None:
    """BackpackError when `out_dir` holds files a loader would read beside the new model that the save does not
    replace: weights in another format or shards (the save writes model.safetensors), or, when no tokenizer is
    saved, an old tokenizer (the files `load_model` takes as one)."""
    from .loading import TOKENIZER_MARKERS

    if not out_dir.is_dir():
        return
    leftovers = [n for n in WEIGHT_FILES if n != "model.safetensors"] + ([] if with_tokenizer else list(TOKENIZER_MARKERS))
    found = sorted(p.name for p in out_dir.iterdir()
                   if p.name in leftovers or fnmatch.fnmatch(p.name, "model-*-of-*.safetensors"))
    if found:
        raise BackpackError(f"{out_dir} already holds {found[0]}, which this conversion does not replace; "
                            "remove it or convert into another folder")


def check_not_in_place(src_dir: Path, out_dir: Path) -> None:
    """BackpackError when `out_dir` is `src_dir`: converting in place would overwrite the checkpoint being read."""
    if out_dir.is_dir() and src_dir.is_dir() and out_dir.samefile(src_dir):
        raise BackpackError(f"--out {out_dir} is the checkpoint being converted; converting in place would overwrite "
                            "it, choose another folder")


def _save_model_dir(model: BackpackForCausalLM, tokenizer, out_dir: Path) -> list[Path]:
    """Save model (and tokenizer) into a temporary folder beside `out_dir`, then move the files into `out_dir`,
    config.json last and the old config.json removed first, so a failure never leaves old and new files that
    load as one model. Returns the files written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        names = sorted(p.name for p in tmp.iterdir() if p.name != "config.json") + ["config.json"]
        out_dir.mkdir(exist_ok=True)
        (out_dir / "config.json").unlink(missing_ok=True)
        for name in names:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out_dir / name for name in sorted(names)]
