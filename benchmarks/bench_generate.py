"""Decoding speed: group-parallel decoding (g = 1, 2, 4) against transformers' GPT-2 with its KV cache.

Greedy decoding of ``--new-tokens`` tokens from a ``--prompt``-token prompt at batch 1 and batch 16, same size
for every model (4 layers, hidden 256, 4 heads, vocab 8192), runs interleaved and repeated, median reported.
Then the time of prefix perplexity over ``--ppl-tokens`` tokens for an AR and a masked checkpoint.
Random weights: speed does not depend on them (EOS is disabled so every run decodes every token).

    python benchmarks/bench_generate.py [--repeats 3] [--ppl-tokens 100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_genssl import GenSSLConfig, GenSSLForCausalLM, GenSSLForPreTraining
from hf_genssl.perplexity import prefix_perplexity

LAYERS, HIDDEN, HEADS, VOCAB = 4, 256, 4, 8192


def genssl_config(positions: int, attention: str = "causal") -> GenSSLConfig:
    return GenSSLConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        max_position_embeddings=positions, content_attention=attention, eos_token_id=None)


def time_decoding(args) -> dict[str, dict[int, float]]:
    positions = args.prompt + args.new_tokens + 8
    ours = GenSSLForCausalLM(genssl_config(positions)).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=positions, n_embd=HIDDEN, n_layer=LAYERS,
                                      n_head=HEADS, bos_token_id=1, eos_token_id=2)).eval()
    runs = {
        "gpt2 (cache)": lambda ids: gpt2.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                                  do_sample=False, pad_token_id=0),
        **{f"genssl g={g}": (lambda ids, g=g: ours.generate(ids, max_new_tokens=args.new_tokens, group_size=g,
                                                             eos_token_id=None)) for g in (1, 2, 4)},
    }
    tokens_per_s: dict[str, dict[int, float]] = {name: {} for name in runs}
    for batch in (1, 16):
        prompt = torch.randint(5, VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
        prompt[:, 0] = 1
        samples: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            for repeat in range(args.repeats + 1):  # first round warms up
                for name, run in runs.items():
                    start = time.perf_counter()
                    out = run(prompt)
                    elapsed = time.perf_counter() - start
                    assert out.shape[1] == args.prompt + args.new_tokens, (name, out.shape)
                    if repeat:
                        samples[name].append(elapsed)
        for name in runs:
            tokens_per_s[name][batch] = batch * args.new_tokens / statistics.median(samples[name])
    return tokens_per_s


def time_perplexity(args) -> dict[str, float]:
    from hf_genssl import train_tokenizer

    words = "the of and to a in that is was he for it with as his on be at by this had not are but from".split()
    generator = torch.Generator().manual_seed(0)
    text_words = [words[i] for i in torch.randint(len(words), (args.ppl_tokens,), generator=generator).tolist()]
    tokenizer = train_tokenizer([" ".join(text_words[i : i + 50]) for i in range(0, 5000, 50)], vocab_size=300)
    texts = [" ".join(text_words[i : i + 1000]) for i in range(0, len(text_words), 1000)]
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    result = {"tokens": n_tokens}
    for name, attention in (("ar", "causal"), ("masked", "bidirectional")):
        config = genssl_config(129, attention)
        config.vocab_size = len(tokenizer)
        model = GenSSLForPreTraining(config).eval()
        start = time.perf_counter()
        scored = prefix_perplexity(model, texts, tokenizer, window=128, batch_size=args.ppl_batch)
        result[f"{name}_seconds"] = time.perf_counter() - start
        result[f"{name}_tokens_scored"] = scored.tokens_scored
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ppl-tokens", type=int, default=100_000, help="0 skips the perplexity timing")
    parser.add_argument("--ppl-batch", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    speed = time_decoding(args)
    print(f"greedy decoding, {args.new_tokens} new tokens from a {args.prompt}-token prompt, "
          f"torch {torch.__version__}, "
          f"{args.threads} threads; median of {args.repeats}")
    print(f"{'model':16s} {'tok/s b=1':>10s} {'tok/s b=16':>11s} {'x g=1 (b=1)':>12s} {'x GPT-2 (b=1)':>14s}")
    for name, values in speed.items():
        print(f"{name:16s} {values[1]:10.1f} {values[16]:11.1f} {values[1] / speed['genssl g=1'][1]:12.2f} "
              f"{values[1] / speed['gpt2 (cache)'][1]:14.2f}")
    ratios = {}
    for batch in (1, 16):
        ratios[f"g=2 / g=1, batch {batch} (target >= 1.8)"] = speed["genssl g=2"][batch] / speed["genssl g=1"][batch]
        ratios[f"g=1 / GPT-2, batch {batch} (target >= 1.0)"] = (
            speed["genssl g=1"][batch] / speed["gpt2 (cache)"][batch]
        )
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    result = {"tokens_per_s": speed, "ratios": ratios}
    if args.ppl_tokens:
        ppl = time_perplexity(args)
        print(f"prefix perplexity over {ppl['tokens']} tokens (window 128): AR {ppl['ar_seconds']:.1f} s, "
              f"masked {ppl['masked_seconds']:.1f} s (one prefix per scored token, {args.ppl_batch} per pass)")
        result["perplexity_timing"] = ppl
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
