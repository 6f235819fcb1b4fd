"""Import / export of the official stanfordnlp/backpack-gpt2 checkpoint layout (backpacklm.model.official, `backpack convert`)."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerFast

from backpacklm import BackpackConfig, BackpackError, BackpackForCausalLM
from backpacklm.cli import main as cli_main
from backpacklm.model import official
from backpacklm.model.official import (
    convert_official,
    export_official,
    load_official,
    official_config_to_ours,
    official_state_dict_to_ours,
    ours_to_official_state_dict,
)

V, D, L, H, K, S, P = 100, 32, 2, 4, 4, 2, 64  # S != K so FFN_2's matrices are not square


def small_config(**overrides) -> BackpackConfig:
    fields = dict(vocab_size=V, n_embd=D, n_layer=L, n_head=H, num_senses=K, sense_intermediate_scale=S,
                  n_positions=P, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return BackpackConfig(**{**fields, **overrides})


def random_model(config: BackpackConfig | None = None, seed: int = 0) -> BackpackForCausalLM:
    """Every parameter random (LayerNorm gains and all biases too), so a mis-mapped tensor changes the logits."""
    torch.manual_seed(seed)
    model = BackpackForCausalLM(config or small_config()).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in name and name.endswith(".weight"):  # LayerNorm gains
                param.copy_(1 + 0.3 * torch.randn_like(param))
            else:
                param.copy_(0.1 * torch.randn_like(param))
    return model


def expected_official_shapes(d, vocab, positions, n_layer, k, s) -> dict[str, tuple]:
    """The official parameter names and shapes, written from the published layout (not from the mapping code)."""
    shapes = {
        "backpack.gpt2_model.wte.weight": (vocab, d),
        "backpack.gpt2_model.wpe.weight": (positions, d),
        "backpack.gpt2_model.ln_f.weight": (d,),
        "backpack.gpt2_model.ln_f.bias": (d,),
        "backpack.sense_network.ln.weight": (d,),
        "backpack.sense_network.ln.bias": (d,),
        "backpack.sense_network.block.ln_1.weight": (d,),
        "backpack.sense_network.block.ln_1.bias": (d,),
        "backpack.sense_network.block.mlp.c_fc.weight": (d, 4 * d),
        "backpack.sense_network.block.mlp.c_fc.bias": (4 * d,),
        "backpack.sense_network.block.mlp.c_proj.weight": (4 * d, d),
        "backpack.sense_network.block.mlp.c_proj.bias": (d,),
        "backpack.sense_network.block.ln_2.weight": (d,),
        "backpack.sense_network.block.ln_2.bias": (d,),
        "backpack.sense_network.final_mlp.c_fc.weight": (d, s * d),
        "backpack.sense_network.final_mlp.c_fc.bias": (s * d,),
        "backpack.sense_network.final_mlp.c_proj.weight": (s * d, k * d),
        "backpack.sense_network.final_mlp.c_proj.bias": (k * d,),
        "backpack.sense_weight_net.c_attn.weight": (2 * d, d),
        "backpack.sense_weight_net.c_attn.bias": (2 * d,),
        "backpack.word_embeddings.weight": (vocab, d),
        "backpack.position_embeddings.weight": (positions, d),
        "lm_head.weight": (vocab, d),
    }
    for i in range(n_layer):
        p = f"backpack.gpt2_model.h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,),
        })
    return shapes


def ids(batch=2, n=11, seed=1):
    return torch.randint(0, V, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.fixture
def official_dir(tmp_path):
    model = random_model()
    directory = tmp_path / "official"
    export_official(model, directory)
    return model, directory


def write_official(directory, sd, config_dict, fmt="safetensors"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_dict))
    if fmt == "safetensors":
        save_file(sd, str(directory / "model.safetensors"))
    else:
        torch.save(dict(sd), directory / "pytorch_model.bin")
    return directory


def cli(argv, monkeypatch):
    """The real `backpack` entry point, with only the convert command registered (other command modules are
    written by others and may not import yet)."""
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["convert"])
    return cli_main.main(argv)


# --- layout ---------------------------------------------------------------------------------------------------------
def test_export_writes_exact_official_names_shapes_and_config(tmp_path):
    config = BackpackConfig.from_preset("tiny", vocab_size=V)
    model = random_model(config)
    written = export_official(model, tmp_path / "out")
    assert sorted(p.name for p in written) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]

    sd = load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = expected_official_shapes(d=128, vocab=V, positions=256, n_layer=4, k=4, s=4)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert torch.equal(sd["lm_head.weight"], sd["backpack.gpt2_model.wte.weight"])
    assert torch.equal(sd["backpack.position_embeddings.weight"], sd["backpack.gpt2_model.wpe.weight"])
    # Conv1D [in, out] in the file vs our nn.Linear [out, in]
    assert torch.equal(sd["backpack.sense_network.block.mlp.c_fc.weight"], model.sense_network.mlp.c_fc.weight.T)
    assert torch.equal(sd["backpack.gpt2_model.h.0.attn.c_attn.weight"], model.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(sd["backpack.sense_weight_net.c_attn.weight"], model.sense_weights.c_attn.weight)

    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "backpack-gpt2"
    assert cfg["architectures"] == ["BackpackGPT2LMHeadModel"]
    assert (cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"], cfg["vocab_size"]) == (128, 4, 4, 256, V)
    assert (cfg["num_senses"], cfg["sense_intermediate_scale"]) == (4, 4)
    assert cfg["scale_attn_by_inverse_layer_idx"] is True and cfg["activation_function"] == "gelu_new"
    assert "shrink_sense_inner" not in cfg and "auto_map" not in cfg
    assert not list((tmp_path / "out").glob("*.tmp"))  # atomic writes leave no temp files


def test_state_dict_functions_round_trip():
    model = random_model()
    sd = ours_to_official_state_dict(model)
    assert set(sd) == set(expected_official_shapes(D, V, P, L, K, S))
    ours = official_state_dict_to_ours(sd, model.config)
    reference = model.state_dict()
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert "lm_head.weight" not in ours_to_official_state_dict(model, aliases=False)


# --- round trips ----------------------------------------------------------------------------------------------------
def test_round_trip_safetensors_gives_equal_logits(official_dir):
    model, directory = official_dir
    loaded = load_official(directory)
    assert isinstance(loaded, BackpackForCausalLM) and not loaded.training
    assert loaded.config.num_senses == K and loaded.config.sense_intermediate_scale == S
    x = ids()
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_round_trip_plain_bin_dict_gives_equal_logits(official_dir, tmp_path):
    model, directory = official_dir
    sd = load_file(str(directory / "model.safetensors"))
    # as a torch.save'd plain dict, without the embedding aliases but with GPT-2's attention mask buffers
    sd = {k: v for k, v in sd.items() if k not in ("backpack.word_embeddings.weight", "backpack.position_embeddings.weight")}
    for i in range(L):
        sd[f"backpack.gpt2_model.h.{i}.attn.bias"] = torch.ones(1, 1, P, P).tril().bool()
        sd[f"backpack.gpt2_model.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_backpack_gpt2.BackpackGPT2LMHeadModel"}
    bin_dir = write_official(tmp_path / "bin", sd, config, fmt="bin")
    x = ids()
    assert torch.equal(logits(load_official(bin_dir), x), logits(model, x))


def test_export_bin_format(tmp_path):
    model = random_model()
    written = export_official(model, tmp_path / "b", fmt="bin")
    assert sorted(p.name for p in written) == ["config.json", "pytorch_model.bin"]
    raw = torch.load(tmp_path / "b" / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in raw.items()} == expected_official_shapes(D, V, P, L, K, S)
    x = ids()
    assert torch.equal(logits(load_official(tmp_path / "b"), x), logits(model, x))
    # a later export in the other format would be shadowed by (or shadow) the old file: refused
    with pytest.raises(BackpackError, match="pytorch_model.bin"):
        export_official(model, tmp_path / "b", fmt="safetensors")
    with pytest.raises(BackpackError, match="format"):
        export_official(model, tmp_path / "c", fmt="pt")


def test_official_config_mapping():
    official = {
        "model_type": "backpack-gpt2", "architectures": ["BackpackGPT2LMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_backpack_gpt2.BackpackGPT2Config"},
        "n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 512, "vocab_size": 50264, "num_senses": 16,
        "sense_intermediate_scale": 4, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
        "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "initializer_range": 0.02,
        "scale_attn_by_inverse_layer_idx": True, "bos_token_id": 50256, "eos_token_id": 50256,
        "transformers_version": "4.28.1", "torch_dtype": "float32", "n_inner": None,
    }
    config = official_config_to_ours(official)
    assert isinstance(config, BackpackConfig) and config.model_type == "backpack"
    assert (config.n_embd, config.n_layer, config.n_head, config.num_senses) == (64, 3, 4, 16)
    assert config.scale_attn_by_inverse_layer_idx and config.eos_token_id == 50256 and config.resid_pdrop == 0.1
    with pytest.raises(BackpackError, match="not an official Backpack config"):
        official_config_to_ours({"model_type": "gpt2", "n_embd": 64})
    with pytest.raises(BackpackError, match="already a backpacklm model"):
        official_config_to_ours(small_config().to_dict())
    with pytest.raises(BackpackError, match="activation_function"):
        official_config_to_ours({**official, "activation_function": "relu"})
    with pytest.raises(BackpackError):
        official_config_to_ours({**official, "n_embd": 66})  # not divisible by n_head
    bad_fields = {  # the reason, not just "Validation error for field ...:"; NaN or negative eps made NaN logits
        "n_layer": (True, "Validation error for field 'n_layer': TypeError: Field 'n_layer' expected int, got bool"),
        "layer_norm_epsilon": ("x", "expected float, got str (value: 'x')"),
        "num_senses": (None, "num_senses must be an integer >= 1, got None"),
    }
    for name, (value, message) in bad_fields.items():
        with pytest.raises(BackpackError) as err:
            official_config_to_ours({**official, name: value})
        assert message in str(err.value)
    for eps in (float("nan"), -1.0, 0.0):
        with pytest.raises(BackpackError, match="layer_norm_epsilon must be a finite number > 0"):
            official_config_to_ours({**official, "layer_norm_epsilon": eps})


# --- the mapping is semantically right: an independent reference forward of the official model --------------------
def reference_official_logits(sd: dict, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    """The official BackpackGPT2LMHeadModel forward written from its equations, reading official names only."""
    d, k, eps = cfg["n_embd"], cfg["num_senses"], cfg["layer_norm_epsilon"]
    trunk = GPT2Model(GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["n_positions"], n_embd=d, n_layer=cfg["n_layer"],
        n_head=cfg["n_head"], layer_norm_epsilon=eps, activation_function="gelu_new", resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_by_inverse_layer_idx=True, bos_token_id=None, eos_token_id=None,
        attn_implementation="eager",
    )).eval()
    assert trunk.config._attn_implementation == "eager"
    prefix = "backpack.gpt2_model."
    result = trunk.load_state_dict({n[len(prefix):]: t for n, t in sd.items() if n.startswith(prefix)}, strict=False)
    assert not result.missing_keys and not result.unexpected_keys

    ln = lambda z, p: F.layer_norm(z, (d,), sd[p + ".weight"], sd[p + ".bias"], eps)
    conv1d = lambda z, p: z @ sd[p + ".weight"] + sd[p + ".bias"]  # Conv1D: weight [in, out]
    gelu_new = lambda z: 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    mlp = lambda z, p: conv1d(gelu_new(conv1d(z, p + ".c_fc")), p + ".c_proj")
    sn = "backpack.sense_network."
    with torch.no_grad():
        h = trunk(x).last_hidden_state  # [b, n, d]
        residual = sd["backpack.gpt2_model.wte.weight"][x]  # [b, n, d]
        residual = ln(residual, sn + "ln") + residual  # block: resid_dropout1(hidden) + residual
        residual = mlp(ln(residual, sn + "block.ln_1"), sn + "block.mlp") + residual
        senses = mlp(ln(residual, sn + "block.ln_2"), sn + "final_mlp")  # [b, n, k*d]
        b, n, _ = senses.shape
        senses = senses.reshape(b, n, k, d).transpose(1, 2)  # [b, k, n, d]
        qk = h @ sd["backpack.sense_weight_net.c_attn.weight"].T + sd["backpack.sense_weight_net.c_attn.bias"]
        q, key = qk.reshape(b, n, 2, k, d // k).unbind(dim=2)  # [b, n, k, d/k] each
        scores = torch.einsum("bthd,bshd->bhts", q, key) / math.sqrt(d // k)
        scores = scores + torch.triu(torch.full((n, n), float("-inf")), 1)
        alpha = scores.softmax(dim=-1)  # [b, k, n, n]
        hidden = (alpha @ senses).sum(dim=1)  # [b, n, d]
        return hidden @ sd["lm_head.weight"].T


def test_imported_model_matches_independent_official_reference(official_dir):
    _, directory = official_dir
    sd = load_file(str(directory / "model.safetensors"))
    cfg = json.loads((directory / "config.json").read_text())
    x = ids(batch=3, n=13)
    reference = reference_official_logits(sd, cfg, x)
    ours = logits(load_official(directory), x)
    assert reference.std() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    # the reference is sensitive to the mapping: swapping LN_a and LN_b in the file changes its logits
    swapped = dict(sd)
    swapped["backpack.sense_network.ln.weight"] = sd["backpack.sense_network.block.ln_1.weight"]
    swapped["backpack.sense_network.block.ln_1.weight"] = sd["backpack.sense_network.ln.weight"]
    assert not torch.allclose(reference_official_logits(swapped, cfg, x), reference, atol=1e-3)


# --- CLI ------------------------------------------------------------------------------------------------------------
def write_tiny_gpt2_tokenizer(directory):
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "<|endoftext|>": 5}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\na b\nab c\n")
    return directory


def test_cli_import_then_auto_model_and_export_back(official_dir, tmp_path, monkeypatch, capsys):
    model, directory = official_dir
    write_tiny_gpt2_tokenizer(directory)
    from backpacklm.model.loading import load_model

    with pytest.raises(BackpackError, match=r"is in the official backpack-gpt2 layout; import it first with `backpack "
                                            r"convert --official"):  # was: "your version of Transformers is out of date"
        load_model(directory)
    out = tmp_path / "ours"
    assert cli(["convert", "--official", str(directory), "--out", str(out)], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'config.json'}" in printed and "model.safetensors" in printed

    auto = AutoModelForCausalLM.from_pretrained(out)  # our layout, no trust_remote_code
    assert type(auto) is BackpackForCausalLM and json.loads((out / "config.json").read_text())["model_type"] == "backpack"
    x = ids()
    assert torch.equal(logits(auto.eval(), x), logits(model, x))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.encode("abcab", add_special_tokens=False) == [4, 3]

    back = tmp_path / "official_again"
    argv = ["convert", "--to-official", "--model", str(out), "--out", str(back), "--format", "bin"]
    assert cli(argv, monkeypatch) == 0
    assert f"wrote {back / 'pytorch_model.bin'}" in capsys.readouterr().out
    assert torch.equal(logits(load_official(back), x), logits(model, x))
    raw = torch.load(back / "pytorch_model.bin", map_location="cpu", weights_only=True)
    original = load_file(str(directory / "model.safetensors"))
    assert raw.keys() == original.keys() and all(torch.equal(raw[k], original[k]) for k in raw)


def test_convert_official_with_tokenizer_dir(official_dir, tmp_path):
    model, directory = official_dir
    tok_dir = write_tiny_gpt2_tokenizer(tmp_path / "tok")
    out = tmp_path / "ours"
    written = convert_official(directory, out, tokenizer_dir=tok_dir)
    assert out / "config.json" in written and out / "tokenizer.json" in written
    assert AutoTokenizer.from_pretrained(out).encode("abc", add_special_tokens=False) == [4]
    # no tokenizer anywhere: the model alone
    out2 = tmp_path / "ours2"
    convert_official(directory, out2)
    assert not (out2 / "tokenizer.json").exists() and (out2 / "config.json").is_file()


def test_convert_refuses_an_out_folder_with_files_it_would_not_replace(official_dir, tmp_path, monkeypatch, capsys):
    model, directory = official_dir
    out = tmp_path / "ours"
    convert_official(directory, out, tokenizer_dir=write_tiny_gpt2_tokenizer(tmp_path / "tok"))
    convert_official(directory, out, tokenizer_dir=tmp_path / "tok")  # the same conversion again replaces every file
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()  # the saves' progress bars
    # without a tokenizer the old one would stay and load beside the new weights
    code = cli(["convert", "--official", str(directory), "--out", str(out)], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "already holds" in err and "which this conversion does not replace" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official", "ours", "tok"]  # no temporary folder left
    shards = tmp_path / "sharded"
    shards.mkdir()
    (shards / "model-00001-of-00002.safetensors").write_bytes(b"old")
    with pytest.raises(BackpackError, match="already holds model-00001-of-00002.safetensors"):
        convert_official(directory, shards)
    x = ids()
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out).eval(), x), logits(model, x))


def test_cli_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    code = cli(["convert", "--official", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("backpack convert: error:") and "does not exist" in err
    assert err.count("\n") == 1

    (tmp_path / "empty").mkdir()
    code = cli(["convert", "--official", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "no config.json" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()

    code = cli(["convert", "--to-official", "--out", str(tmp_path / "o")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "--model" in err and err.count("\n") == 1


def test_cli_truncated_weights_exit_2(official_dir, monkeypatch, capsys, tmp_path):
    _, directory = official_dir
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code = cli(["convert", "--official", str(directory), "--out", str(tmp_path / "o")], monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_convert_is_a_registered_command():
    assert "convert" in cli_main.COMMAND_MODULES


# --- strictness -----------------------------------------------------------------------------------------------------
@pytest.fixture
def official_parts(official_dir):
    _, directory = official_dir
    return load_file(str(directory / "model.safetensors")), json.loads((directory / "config.json").read_text())


def test_missing_key_is_named(official_parts, tmp_path):
    sd, cfg = official_parts
    del sd["backpack.sense_network.block.ln_2.bias"]
    with pytest.raises(BackpackError, match=r"missing key backpack\.sense_network\.block\.ln_2\.bias"):
        load_official(write_official(tmp_path / "m", sd, cfg))


def test_unexpected_key_is_named(official_parts, tmp_path):
    sd, cfg = official_parts
    sd["backpack.sense_network.extra.weight"] = torch.zeros(3)
    with pytest.raises(BackpackError, match=r"unexpected key backpack\.sense_network\.extra\.weight"):
        load_official(write_official(tmp_path / "u", sd, cfg))
    # a mask buffer of a layer that does not exist is not ignored
    sd2 = {k: v for k, v in sd.items() if k != "backpack.sense_network.extra.weight"}
    sd2[f"backpack.gpt2_model.h.{L}.attn.bias"] = torch.ones(1)
    with pytest.raises(BackpackError, match=rf"unexpected key backpack\.gpt2_model\.h\.{L}\.attn\.bias"):
        official_state_dict_to_ours(sd2, official_config_to_ours(cfg))


def test_wrong_shape_is_named(official_parts, tmp_path):
    sd, cfg = official_parts
    # the FFN_2 output layer stored transposed (as an nn.Linear would be) instead of Conv1D [in, out]
    sd["backpack.sense_network.final_mlp.c_proj.weight"] = sd["backpack.sense_network.final_mlp.c_proj.weight"].T.contiguous()
    with pytest.raises(BackpackError, match=r"backpack\.sense_network\.final_mlp\.c_proj\.weight has shape \[128, 64\]"):
        load_official(write_official(tmp_path / "s", sd, cfg))


def test_alias_must_equal_what_it_ties(official_parts, tmp_path):
    sd, cfg = official_parts
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(BackpackError, match=r"lm_head\.weight differs"):
        load_official(write_official(tmp_path / "a", sd, cfg))


def test_truncated_bin_is_a_backpack_error(official_parts, tmp_path):
    sd, cfg = official_parts
    directory = write_official(tmp_path / "t", sd, cfg, fmt="bin")
    path = directory / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BackpackError, match="cannot read weights file"):
        load_official(directory)


class NotATensor:  # pickled objects are refused (weights_only), never executed
    pass


def test_bin_with_pickled_object_is_refused(official_parts, tmp_path):
    sd, cfg = official_parts
    directory = write_official(tmp_path / "p", sd, cfg)
    (directory / "model.safetensors").unlink()
    torch.save({"backpack.gpt2_model.wte.weight": NotATensor()}, directory / "pytorch_model.bin")
    with pytest.raises(BackpackError, match="cannot read weights file"):
        load_official(directory)


def test_not_a_checkpoint_directories(tmp_path, official_dir):
    _, good = official_dir
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackpackError, match="not a directory"):
        load_official(tmp_path / "file")
    with pytest.raises(BackpackError, match="does not exist"):
        load_official(tmp_path / "missing")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    with pytest.raises(BackpackError, match="not an official Backpack config"):
        load_official(tmp_path / "gpt2")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{not json")
    with pytest.raises(BackpackError, match="cannot read"):
        load_official(tmp_path / "badjson")
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    shutil.copy(good / "config.json", no_weights / "config.json")
    with pytest.raises(BackpackError, match="holds no weights"):
        load_official(no_weights)
    # our own layout is not the official one
    random_model().save_pretrained(tmp_path / "ours")
    with pytest.raises(BackpackError, match="already a backpacklm model"):
        load_official(tmp_path / "ours")


def test_export_refuses_what_the_official_layout_cannot_hold(tmp_path):
    with pytest.raises(BackpackError, match="shrink_sense_inner"):
        export_official(random_model(small_config(shrink_sense_inner=True)), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_refuses_a_training_run_or_a_model_of_ours(tmp_path):
    """Their config.json would be replaced by the official one, which our loaders do not read: the run is lost."""
    model = random_model()
    run = tmp_path / "run"
    run.mkdir()
    (run / "latest.json").write_text('{"checkpoint": "step-0000001"}')
    with pytest.raises(BackpackError, match="is a training run"):
        export_official(model, run)
    assert [p.name for p in run.iterdir()] == ["latest.json"]
    model.save_pretrained(tmp_path / "ours")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ours").iterdir()}
    with pytest.raises(BackpackError, match="not in the official layout"):
        export_official(model, tmp_path / "ours")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ours").iterdir()} == before
    for _ in range(2):  # exporting again over an earlier export replaces it
        export_official(model, tmp_path / "official")
    assert torch.equal(logits(load_official(tmp_path / "official"), ids()), logits(model, ids()))


def test_sharded_safetensors_checkpoint(official_parts, official_dir, tmp_path):
    model, _ = official_dir
    sd, cfg = official_parts
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(cfg))
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: sd[k] for k in keys}, str(directory / shard))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    x = ids()
    assert torch.equal(logits(load_official(directory), x), logits(model, x))
    key = "backpack.sense_network.ln.bias"  # also in the other shard, with other values: neither may win silently
    shard = "model-00002-of-00002.safetensors" if key in halves["model-00001-of-00002.safetensors"] else \
        "model-00001-of-00002.safetensors"
    save_file({k: sd[k] for k in halves[shard]} | {key: sd[key] + 1}, str(directory / shard))
    with pytest.raises(BackpackError, match=r"key backpack\.sense_network\.ln\.bias appears in more than one shard"):
        load_official(directory)
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(BackpackError, match="model-00002-of-00002.safetensors"):
        load_official(directory)


# --- safe writes ----------------------------------------------------------------------------------------------------
def test_converting_in_place_is_refused_and_changes_nothing(official_dir, tmp_path, monkeypatch, capsys):
    _, directory = official_dir
    ours = tmp_path / "ours"
    random_model().save_pretrained(ours)
    before = {p: p.read_bytes() for d in (directory, ours) for p in d.iterdir()}
    for argv in (["--official", str(directory), "--out", str(directory / ".")],
                 ["--to-official", "--model", str(ours), "--out", str(ours)]):
        assert cli(["convert", *argv], monkeypatch) == 2
        err = capsys.readouterr().err
        assert "converting in place would overwrite it" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for d in (directory, ours) for p in d.iterdir()} == before


def test_failed_import_leaves_the_previous_model_in_out(official_dir, tmp_path, monkeypatch):
    model, directory = official_dir
    out = tmp_path / "ours"
    convert_official(directory, out)
    other = tmp_path / "other"
    export_official(random_model(seed=1), other)
    write_tiny_gpt2_tokenizer(other)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", fail)  # after the weights were saved
    with pytest.raises(BackpackError, match="cannot write to .*No space left on device"):
        convert_official(other, out)
    x = ids()
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(out).eval(), x), logits(model, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official", "other", "ours"]  # no temporary folder left
    with pytest.raises(BackpackError, match="No space left on device"):  # a new --out is not even created
        convert_official(other, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official", "other", "ours"]


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", None, "vocab_size must be an integer >= 1, got None"),
    ("n_positions", None, "n_positions must be an integer >= 1, got None"),
    ("n_inner", -5, "n_inner must be an integer >= 1, got -5"),
    ("sense_intermediate_scale", None, "sense_intermediate_scale must be an integer >= 1, got None"),
])
def test_config_sizes_that_build_no_model_are_named(official_parts, tmp_path, field, value, message):
    """Each was a TypeError / RuntimeError traceback while the model was built."""
    sd, cfg = official_parts
    with pytest.raises(BackpackError, match=rf"config\.json: {message}"):
        load_official(write_official(tmp_path / "c", sd, {**cfg, field: value}))


def test_failed_export_keeps_the_previous_export(official_dir, tmp_path, monkeypatch):
    model, directory = official_dir
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def unserializable(*args, **kwargs):
        raise TypeError("Object of type device is not JSON serializable")

    other = random_model(seed=1)
    # fails after the weights are written (reading the old config.json still works)
    monkeypatch.setattr(official, "json", SimpleNamespace(dumps=unserializable, loads=json.loads))
    with pytest.raises(TypeError, match="not JSON serializable"):
        export_official(other, directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before  # not new weights under the old config
