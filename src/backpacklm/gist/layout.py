"""The gist prompt layout (Mu et al. 2023, sec. 3): k `<GIST>` tokens between the instruction and the input.

    decoder-only:  Instruction: {instruction}\\n{<GIST> x k}\\nInput: {input}\\nOutput: {output}<|endoftext|>
                   (no input: the "\\nInput: ..." line is dropped); the loss is on " {output}<|endoftext|>" only.
    encoder-decoder: source = Instruction: {instruction}\\n{<GIST> x k}\\nInput: {input}; target = {output}.

The prompt is encoded piece by piece (instruction part, gists, tail), so the gists are exact token ids whatever the
tokenizer (character-level, byte-level BPE, any Hugging Face tokenizer) and the instruction part is a prefix of the
prompt's ids: compressing it alone and then continuing with the tail gives the same ids as the whole prompt.
The `<GIST>` string is reserved: instructions, inputs and outputs that contain it are rejected (`check_no_gist`).
Other special-token strings in them (`<|endoftext|>`) are plain text (`encode_text`).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch
from tokenizers import AddedToken

from ..data.tokenizers import build_char_tokenizer, build_word_tokenizer, encode_strict
from ..errors import BackpackError

GIST_TOKEN = "<GIST>"
INSTRUCTION_TEMPLATE = "Instruction: {instruction}\n"
INPUT_TEMPLATE = "\nInput: {input}"
OUTPUT_MARKER = "\nOutput:"
COMPLETION_TEMPLATE = " {output}"
IGNORE = -100  # label of tokens without loss (prompt and padding)


@dataclass
class GistExample:
    """One Alpaca-format record."""

    instruction: str
    input: str = ""
    output: str = ""


@dataclass
class EncodedExample:
    """Token ids of one example in the gist layout.

    input_ids: prompt (+ completion and end-of-text when encoded with outputs), [pos].
    labels: same length; IGNORE on the prompt, the ids on the completion.
    n_instruction: tokens before the first gist ("Instruction: ...\\n").
    n_gists: k.
    n_prompt: tokens up to and including "Output:" (where generation starts).
    """

    input_ids: list[int]
    labels: list[int]
    n_instruction: int
    n_gists: int
    n_prompt: int

    @property
    def gist_end(self) -> int:
        """Position after the last gist: the first position of the tail (input part)."""
        return self.n_instruction + self.n_gists


def add_gist_token(tokenizer, model=None) -> int:
    """Add `<GIST>` to the tokenizer (if absent) and, given a model, a row for it (`init_gist_rows`); returns its id."""
    fresh = GIST_TOKEN not in tokenizer.get_vocab()
    if fresh:
        tokenizer.add_tokens([AddedToken(GIST_TOKEN, special=True, normalized=False)], special_tokens=True)
    gist_id = tokenizer.convert_tokens_to_ids(GIST_TOKEN)
    if model is not None:
        init_gist_rows(model, gist_id, fresh)
    return gist_id


@torch.no_grad()
def init_gist_rows(model, gist_id: int, fresh: bool = True) -> None:
    """Grow the model's vocabulary to cover `gist_id`; new rows of the input embeddings (and of an untied LM head)
    are the mean of the existing rows (Mu et al. 2023, sec. 3). With `fresh` (the token was just added to the
    tokenizer) a spare row the model already had is set to the mean too; otherwise existing rows are kept."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    if gist_id >= old_rows:
        model.resize_token_embeddings(gist_id + 1, mean_resizing=False)
    elif not fresh:
        return
    start = min(old_rows, gist_id)
    weights = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != weights[0].data_ptr():
        weights.append(output.weight)  # an untied LM head
    for weight in weights:
        weight[start:gist_id + 1] = weight[:start].mean(dim=0)


def gist_token_id(tokenizer) -> int:
    """Id of `<GIST>`; an error if the tokenizer has none (the model was not trained with gist tokens)."""
    if GIST_TOKEN not in tokenizer.get_vocab():
        raise BackpackError(f"the tokenizer has no {GIST_TOKEN} token: train the model with `backpack gist train` first")
    return tokenizer.convert_tokens_to_ids(GIST_TOKEN)


def eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise BackpackError("the tokenizer has no end-of-text token")
    return tokenizer.eos_token_id


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of a piece of the layout: user text is data, so `<|endoftext|>` or any other special-token string in it
    is read as its plain characters (as `backpack data prepare` does), never as that token."""
    return encode_strict(tokenizer, text, specials_as_text=True)


def check_no_gist(text: str, what: str) -> None:
    """BackpackError if user text contains the reserved `<GIST>` string (it would be read as a gist token)."""
    if GIST_TOKEN in text:
        shown = repr(text if len(text) <= 60 else text[:57] + "...")
        raise BackpackError(f"{what} {shown} contains {GIST_TOKEN}, which is reserved for gist tokens")


def check_example(example: GistExample) -> None:
    """`check_no_gist` on the instruction, input and output."""
    for field in ("instruction", "input", "output"):
        check_no_gist(getattr(example, field), field)


def encode_example(tokenizer, example: GistExample, num_gists: int, with_output: bool = True) -> EncodedExample:
    """The example in the decoder-only layout (see module docstring). num_gists = 0 gives the plain prompt."""
    check_example(example)
    gist_id = gist_token_id(tokenizer) if num_gists else None
    instruction = encode_text(tokenizer, INSTRUCTION_TEMPLATE.format(instruction=example.instruction))
    tail = encode_text(tokenizer, _tail_text(example).removeprefix("\n") if num_gists == 0 else _tail_text(example))
    prompt = instruction + [gist_id] * num_gists + tail
    completion = []
    if with_output:
        completion = encode_text(tokenizer, COMPLETION_TEMPLATE.format(output=example.output)) + [eos_id(tokenizer)]
    return EncodedExample(
        input_ids=prompt + completion,
        labels=[IGNORE] * len(prompt) + completion,
        n_instruction=len(instruction),
        n_gists=num_gists,
        n_prompt=len(prompt),
    )


def encode_tail(tokenizer, example: GistExample) -> list[int]:
    """Ids of the part after the gists ("\\nInput: ...\\nOutput:"), to continue a compressed prompt with."""
    check_no_gist(example.input, "input")
    return encode_text(tokenizer, _tail_text(example))


def _tail_text(example: GistExample) -> str:
    return (INPUT_TEMPLATE.format(input=example.input) if example.input else "") + OUTPUT_MARKER


def encode_instruction(tokenizer, instruction: str, num_gists: int) -> list[int]:
    """Ids of "Instruction: ...\\n" followed by k gists: what `compress` runs once."""
    check_no_gist(instruction, "instruction")
    ids = encode_text(tokenizer, INSTRUCTION_TEMPLATE.format(instruction=instruction))
    return ids + [gist_token_id(tokenizer)] * num_gists


def decode_completion(tokenizer, ids: list[int]) -> str:
    """Generated ids -> output text: cut at end-of-text, drop special tokens and the leading space."""
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text[1:] if text.startswith(" ") else text


def layout_text(examples: list[GistExample]) -> str:
    """All text the layout produces for these examples (for building a character vocabulary)."""
    pieces = [INSTRUCTION_TEMPLATE, INPUT_TEMPLATE, OUTPUT_MARKER, COMPLETION_TEMPLATE]
    pieces += [f"{e.instruction}{e.input}{e.output}" for e in examples]
    return "".join(pieces)


def build_gist_char_tokenizer(examples: list[GistExample]):
    """A character-level tokenizer covering printable ASCII and every character of the examples and the layout,
    plus `<|endoftext|>` and `<GIST>` (for training from scratch)."""
    tokenizer = build_char_tokenizer(string.printable + layout_text(examples))
    add_gist_token(tokenizer)
    return tokenizer


def build_gist_word_tokenizer(examples: list[GistExample]):
    """A word-level tokenizer (`build_word_tokenizer`: one id per GPT-2 style word piece) over the examples and the
    layout, plus `<|endoftext|>`, `<|unk|>` and `<GIST>`: for worlds with a small vocabulary, whose prompts are then a
    few tokens long (pass every split's examples, so that no evaluation word is unknown)."""
    texts = [text for e in examples for text in (INSTRUCTION_TEMPLATE.format(instruction=e.instruction), _tail_text(e),
                                                 _tail_text(e).removeprefix("\n"), COMPLETION_TEMPLATE.format(output=e.output))]
    tokenizer = build_word_tokenizer(texts)
    add_gist_token(tokenizer)
    return tokenizer
