"""Tokenizers: character-level, byte-level BPE trained on a corpus, or loaded (GPT-2 files, a folder, the hub).

Every tokenizer is a Hugging Face `PreTrainedTokenizerFast` whose eos token is `<|endoftext|>`, so
`tokenizer.save_pretrained(dir)` and later `AutoTokenizer.from_pretrained(dir)` work offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

from ..errors import BackpackError, first_line

EOT = "<|endoftext|>"


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT, bos_token=EOT)


def build_char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """One id per distinct character of `text` (sorted by code point), then `<|endoftext|>` as the last id.

    Characters outside the vocabulary encode to `<|endoftext|>`; `encode_strict` rejects them instead.
    """
    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    vocab[EOT] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    backend.pre_tokenizer = pre_tokenizers.FixedLength(length=1)  # every character, newlines too, is one piece
    backend.decoder = decoders.Fuse()  # join pieces with nothing in between, so decode(encode(text)) == text
    return _wrap(backend)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style, no prefix space) with `vocab_size` ids, `<|endoftext|>` being id 0.

    The vocabulary is smaller than asked when the texts run out of pairs to merge.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        minimum = len(alphabet) + 1
        raise BackpackError(f"BPE vocab size must be at least {minimum} (256 bytes + {EOT}), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=alphabet, show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return _wrap(backend)


UNK = "<|unk|>"


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """One id per distinct word piece of `texts` (GPT-2 style pieces: " word", "word", " ."), sorted, after
    `<|endoftext|>` (id 0) and `<|unk|>` (id 1), which unknown pieces encode to.

    Space-aware like GPT-2's BPE (the space belongs to the following word) and tiny for small vocabularies, so
    a small model's softmax costs little (used for the synthetic worlds).
    """
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    pieces = {piece for text in texts for piece, _ in pre_tokenizer.pre_tokenize_str(text)}
    vocab = {EOT: 0, UNK: 1} | {piece: i + 2 for i, piece in enumerate(sorted(pieces))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOT, UNK])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOT, bos_token=EOT, unk_token=UNK)


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a folder or by name.

    A folder holds tokenizer.json (Hugging Face), vocab.json + merges.txt, or GPT-2's original encoder.json +
    vocab.bpe. The name "gpt2" loads GPT-2's tokenizer from the Hugging Face hub (or its local cache).
    """
    path = Path(spec)
    if path.is_dir():
        tokenizer = _load_folder(path)
    elif str(spec) == "gpt2":
        try:
            tokenizer = AutoTokenizer.from_pretrained("gpt2")
        except (OSError, ValueError) as err:
            reason = first_line(err)
            raise BackpackError(f"could not load tokenizer 'gpt2' from the Hugging Face hub ({reason}); give a folder "
                                "with GPT-2's vocab.json + merges.txt or encoder.json + vocab.bpe instead") from None
    else:
        raise BackpackError(
            f"unknown tokenizer {str(spec)!r}: expected 'gpt2' or a folder holding tokenizer.json, "
            "vocab.json + merges.txt, or encoder.json + vocab.bpe"
        )
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise BackpackError(f"{spec}: not a fast (tokenizers-backed) tokenizer")
    if tokenizer.eos_token is None:  # a bare tokenizer.json: use (or add) <|endoftext|>
        tokenizer.add_special_tokens({"eos_token": EOT})
    return tokenizer


def _load_folder(path: Path) -> PreTrainedTokenizerFast:
    if (path / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise BackpackError(f"{path}: cannot load tokenizer ({first_line(err)})") from None
        except Exception as err:  # a malformed tokenizer.json: KeyError, tokenizers' own Exception, ...
            raise BackpackError(f"{path}: cannot load tokenizer ({type(err).__name__}: {first_line(err)})") from None
    for vocab_name, merges_name in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")]:
        if (path / vocab_name).is_file() and (path / merges_name).is_file():
            return _load_byte_level_bpe(path / vocab_name, path / merges_name)
    raise BackpackError(f"{path}: no tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe in it")


def _load_byte_level_bpe(vocab_file: Path, merges_file: Path) -> PreTrainedTokenizerFast:
    """GPT-2 style files. (In transformers 5, GPT2TokenizerFast(vocab_file=..., merges_file=...) is empty.)"""
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:  # ValueError covers bad JSON and bad UTF-8
        raise BackpackError(f"cannot read {vocab_file} / {merges_file}: {err}") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    if not isinstance(vocab, dict) or any(len(pair) != 2 for pair in merges):
        raise BackpackError(f"{vocab_file} / {merges_file}: not a BPE vocabulary (token->id) and merge list (a b)")
    if bad := next(((t, i) for t, i in vocab.items() if type(i) is not int or i < 0), None):
        raise BackpackError(f"{vocab_file}: token {bad[0]!r} has id {bad[1]!r}; ids are integers >= 0")
    try:
        return GPT2TokenizerFast(vocab=vocab, merges=merges)
    except Exception as err:  # tokenizers raises TypeError / its own Exception for non-integer ids, unknown merges
        raise BackpackError(f"{vocab_file} / {merges_file}: not a usable BPE ({first_line(err)})") from None


def _backend(tokenizer) -> Tokenizer | None:
    """The `tokenizers` object behind a fast tokenizer (None for a tokenizer without one)."""
    return getattr(tokenizer, "backend_tokenizer", None)


def is_char_tokenizer(tokenizer: PreTrainedTokenizerFast) -> bool:
    """True for tokenizers made by `build_char_tokenizer` (and saved/loaded copies of them)."""
    backend = _backend(tokenizer)
    return backend is not None and isinstance(backend.pre_tokenizer, pre_tokenizers.FixedLength)


def tokenizer_difference(a: PreTrainedTokenizerFast, b: PreTrainedTokenizerFast, b_may_extend: bool = False) -> str:
    """What differs between `a` and `b` for reading token ids ("" if nothing), `a`'s side first: the kind of model
    (BPE, WordLevel, ...) and the vocabulary (token -> id, added tokens included), e.g. "vocabulary 6 vs 20 tokens,
    first difference at id 2: 'a' vs '.'". Ids and token strings only, so a saved and loaded copy compares equal.
    `b_may_extend`: `b` may hold tokens `a` lacks (e.g. a model's added <GIST>), as long as every id of `a` means the
    same token in `b`."""
    kinds = [type(_backend(t).model).__name__ for t in (a, b) if _backend(t) is not None]
    parts = [f"{kinds[0]} vs {kinds[1]} tokenizer"] if len(kinds) == 2 and kinds[0] != kinds[1] else []
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    extends = b_may_extend and all(vocab_b.get(token) == i for token, i in vocab_a.items())
    if vocab_a != vocab_b and not extends:
        token_a, token_b = ({i: token for token, i in vocab.items()} for vocab in (vocab_a, vocab_b))
        first = min((i for i in token_a.keys() | token_b.keys() if token_a.get(i) != token_b.get(i)), default=None)
        parts.append(f"vocabulary {len(vocab_a)} vs {len(vocab_b)} tokens")
        if first is not None:  # None: the same ids, but some id under two tokens
            shown = (repr(t) if t is not None else "none" for t in (token_a.get(first), token_b.get(first)))
            parts[-1] += f", first difference at id {first}: " + " vs ".join(shown)
    return "; ".join(parts)


def unknown_characters(tokenizer: PreTrainedTokenizerFast, text: str) -> str:
    """The distinct characters of `text` a char tokenizer lacks, sorted ("" if none, or not a char tokenizer)."""
    if not is_char_tokenizer(tokenizer):
        return ""
    for special in tokenizer.all_special_tokens:  # encode() reads these as their special token
        text = text.replace(special, "")
    return "".join(sorted(set(text) - tokenizer.get_vocab().keys()))


def _unknown_error(chars: str) -> BackpackError:
    shown = " ".join(repr(ch) for ch in chars[:10]) + (" ..." if len(chars) > 10 else "")
    return BackpackError(f"{len(chars)} character(s) not in the tokenizer's vocabulary: {shown}")


def unknown_words(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    """The distinct pieces of `text` a word-level tokenizer reads as its unknown token ([] for other tokenizers)."""
    backend = _backend(tokenizer)
    if backend is None or not isinstance(backend.model, models.WordLevel) or is_char_tokenizer(tokenizer):
        return []
    unk = backend.model.unk_token
    unk_id = backend.token_to_id(unk)
    encoding = backend.encode(text, add_special_tokens=False)
    pieces = (text[start:end] for i, (start, end) in zip(encoding.ids, encoding.offsets) if i == unk_id)
    return list(dict.fromkeys(piece.strip() or piece for piece in pieces if piece != unk))


def encode_strict(tokenizer: PreTrainedTokenizerFast, text: str, specials_as_text: bool = False) -> list[int]:
    """Token ids of `text` (no special tokens added), after `check_encodable`. specials_as_text: a special-token
    string in the text (`<|endoftext|>`) is read as plain characters, not as that token (for data, not prompts)."""
    check_encodable(tokenizer, text)
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=specials_as_text)


def check_encodable(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    """BackpackError for text that is not valid Unicode (undecodable bytes of a command-line argument), and naming
    any character (or, word-level, any word) the tokenizer lacks."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BackpackError(f"text is not valid UTF-8 (undecodable bytes at character {err.start})") from None
    if chars := unknown_characters(tokenizer, text):
        raise _unknown_error(chars)
    if words := unknown_words(tokenizer, text):
        shown = " ".join(repr(w) for w in words[:10]) + (" ..." if len(words) > 10 else "")
        raise BackpackError(f"{len(words)} word(s) not in the tokenizer's vocabulary: {shown}")


def encode_ordinary(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[np.ndarray]:
    """Token ids (int64 arrays) of each text, reading special-token strings like `<|endoftext|>` as plain text.

    Char tokenizers map code points through a sorted table (5 MB in well under a second); others encode the batch
    in parallel threads.
    """
    if is_char_tokenizer(tokenizer):
        table = sorted((ord(ch), i) for ch, i in tokenizer.get_vocab().items() if len(ch) == 1)
        table.append((0xFFFFFFFF, -1))  # sentinel above every code point: searchsorted stays in range
        codes = np.array([code for code, _ in table], dtype=np.uint32)
        ids = np.array([i for _, i in table], dtype=np.int64)
        out = []
        for text in texts:
            points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
            pos = np.searchsorted(codes, points)
            missing = codes[pos] != points
            if missing.any():
                raise _unknown_error("".join(map(chr, np.unique(points[missing]))))
            out.append(ids[pos])
        return out
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy, so the settings below stay local
    backend.encode_special_tokens = True
    backend.no_truncation()
    backend.no_padding()
    return [np.array(enc.ids, dtype=np.int64) for enc in backend.encode_batch_fast(texts, add_special_tokens=False)]
