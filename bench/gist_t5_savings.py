"""What gist caching saves on an encoder-decoder: a T5 of t5-small's shape on Alpaca+ instructions.

Claims under test (issue 5, sec. 3-4, for T5): the gist cache stores k positions (encoder keys/values of every layer
plus the encoder outputs) instead of the whole instruction; the post-instruction forward (the encoder on the input
segment + the first decoder step) needs fewer FLOPs and less time to first token than no caching; and generating
from the gist cache gives the uncached gist-masked model's logits (float32, the first 8 prompts as one batch, with
mixed instruction lengths).

Set-up: a randomly initialised T5 with t5-small's dimensions (d_model 512, 6 + 6 layers, 8 heads of 64, d_ff 2048)
and GPT-2's BPE tokenizer (`../shared/data/gpt2_bpe`), saved to a directory and turned into a gist model (k = 1) by
`backpack gist train`'s loop for a few steps on the seen split (quality is not measured here: savings do not depend on
the weights). Then `measure_savings` on the first --prompts prompts of the seen split, at --batch-sizes (1 and 8).

Writes bench/results/<out>.json and <out>.md (--out, default gist_t5_savings).
Run:  .venv/bin/python bench/gist_t5_savings.py [--prompts 32 --repeats 3 --threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import T5Config, T5ForConditionalGeneration

from common import DEFAULT_DATA_DIR, RESULTS_DIR, save_result

from backpacklm.data.tokenizers import load_tokenizer
from backpacklm.gist.cache import compress, prefill_compressed, prefill_uncached, prompt_ids, tail_ids
from backpacklm.gist.data import load_examples
from backpacklm.gist.savings import measure_savings
from backpacklm.gist.train import GistTrainConfig, train_gist
from backpacklm.model.loading import load_model

T5_SMALL = dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, dropout_rate=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR), help="folder with alpaca_plus/ and gpt2_bpe/")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="gist fine-tuning steps (adds <GIST>, records k)")
    parser.add_argument("--work", default="/tmp/gist_t5_bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="gist_t5_savings", help="results name: bench/results/<out>.json and <out>.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    seen = data / "alpaca_plus" / "alpaca_plus_validation_seen.json"

    if not (work / "run" / "latest.json").is_file():
        tokenizer = load_tokenizer(data / "gpt2_bpe")
        eos = tokenizer.eos_token_id
        config = T5Config(vocab_size=len(tokenizer), pad_token_id=eos, eos_token_id=eos, decoder_start_token_id=eos,
                          **T5_SMALL)
        torch.manual_seed(0)
        T5ForConditionalGeneration(config).save_pretrained(work / "t5")
        tokenizer.save_pretrained(work / "t5")
        train_gist(GistTrainConfig(data=str(seen), out=str(work / "run"), init_from=str(work / "t5"), gists=1,
                                   max_steps=args.steps, batch_size=4, eval_interval=args.steps, eval_batches=1,
                                   warmup_steps=1, threads=args.threads, progress=False))
    model, tokenizer = load_model(work / "run" / "model")
    examples = load_examples(seen)[: args.prompts]

    # exactness on these prompts: one batch of (up to) 8 with mixed instruction lengths
    batch = examples[:8]
    eos, k = tokenizer.eos_token_id, model.config.num_gists
    with torch.no_grad():
        cached = prefill_compressed(model, compress(model, tokenizer, [e.instruction for e in batch]),
                                    [tail_ids(model, tokenizer, e.input) for e in batch], eos).logits
        uncached = prefill_uncached(model, [prompt_ids(model, tokenizer, e, k) for e in batch],
                                    model.config.gist_token_id, "gist", eos).logits
    max_diff = float((cached - uncached).abs().max())

    report = measure_savings(model, tokenizer, examples, args.batch_sizes, args.new_tokens, args.repeats,
                             name="T5 (t5-small shape, random init), Alpaca+ seen")
    table = report.table()
    exactness = f"max |logits cached - uncached| (batch {len(batch)}, first token): {max_diff:.2e}"
    print(table)
    print(exactness)
    save_result(args.out, {"config": {**T5_SMALL, "vocab_size": model.config.vocab_size, "k": k,
                                      "prompts": len(examples), "new_tokens": args.new_tokens,
                                      "repeats": args.repeats, "threads": args.threads},
                           "max_abs_logit_diff": max_diff, "exactness_batch_size": len(batch), **report.to_dict()})
    (RESULTS_DIR / f"{args.out}.md").write_text(f"{table}\n\n{exactness}\n")


if __name__ == "__main__":
    main()
