"""Why GenSSLConfig defaults to RoPE: learned absolute positions against rotary ones in two-stream pretraining.

The query row of token i never sees token i, so unlike GPT it gets no bigram for free from its own residual: it
must learn to attend to position i - 1. With rotary angles that is one relative pattern; with learned absolute
embeddings every position learns it separately. This trains the same small model with each position type, for
groups of 1 (AR) and 2 (semi-AR), side by side on the SOTU speeches of the offline corpus (same data order, same
initial weights apart from the position table), and prints the held-out loss after a fixed number of steps
next to the unigram loss (what a model that ignores its context reaches).

    python benchmarks/bench_positions.py [--steps 150] [--positions rope absolute] [--group-sizes 1 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from hf_genssl import DataCollatorForSemiAutoregressiveLM, GenSSLConfig, GenSSLForPreTraining, train_tokenizer
from hf_genssl.data.corpus import iter_corpus_texts

LAYERS, HIDDEN, HEADS, SEQ, BATCH, VOCAB, LR = 3, 128, 4, 128, 16, 4096, 2e-3


def blocks(tokenizer, texts: list[str]) -> torch.Tensor:
    """The texts' tokens, concatenated and cut into rows of SEQ - 1 (the collator puts a BOS in front)."""
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]]
    n = len(ids) // (SEQ - 1)
    return torch.tensor(ids[: n * (SEQ - 1)]).view(n, SEQ - 1)


def unigram_loss(train: torch.Tensor, validation: torch.Tensor) -> float:
    """Cross-entropy of the training unigram distribution (add-one smoothed) on the validation tokens."""
    counts = torch.bincount(train.flatten(), minlength=VOCAB).double() + 1
    return float(-(counts / counts.sum()).log()[validation.flatten()].mean())


@torch.no_grad()
def evaluate(model, collator, validation: torch.Tensor) -> float:
    model.eval()
    losses = [model(**collator(validation[i : i + BATCH].tolist())).loss.item()
              for i in range(0, len(validation), BATCH)]
    model.train()
    return sum(losses) / len(losses)


def train(position_embedding_type: str, group_size: int, train_rows, validation, steps: int, tokenizer) -> dict:
    torch.manual_seed(0)
    config = GenSSLConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, max_position_embeddings=SEQ,
                          position_embedding_type=position_embedding_type, bos_token_id=tokenizer.bos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    model = GenSSLForPreTraining(config).train()
    collator = DataCollatorForSemiAutoregressiveLM(tokenizer=tokenizer, group_size=group_size, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for step in range(steps):
        rows = train_rows[order[(step * BATCH + torch.arange(BATCH)) % len(order)]]
        loss = model(**collator(rows.tolist())).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"positions": position_embedding_type, "group_size": group_size, "steps": steps,
            "validation_loss": evaluate(model, collator, validation), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--validation-rows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--positions", nargs="+", default=["rope", "absolute"], choices=["rope", "absolute"])
    parser.add_argument("--group-sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sources = {"sources": ("sotu",)}
    tokenizer = train_tokenizer(iter_corpus_texts("train", **sources), vocab_size=VOCAB)
    train_rows = blocks(tokenizer, list(iter_corpus_texts("train", **sources)))
    validation = blocks(tokenizer, list(iter_corpus_texts("validation", **sources)))[: args.validation_rows]
    unigram = unigram_loss(train_rows, validation)
    rows = [train(p, g, train_rows, validation, args.steps, tokenizer)
            for g in args.group_sizes for p in args.positions]

    print(f"SOTU speeches, {LAYERS} layers, hidden {HIDDEN}, batch {BATCH} x {SEQ} tokens, lr {LR}, AdamW, "
          f"{args.steps} steps; validation: {len(validation)} rows of the corpus's validation split")
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"unigram loss (context ignored): {unigram:.3f}")
    print("| positions | group size | validation loss | perplexity | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['positions']} | {r['group_size']} | {r['validation_loss']:.3f} | "
              f"{math.exp(r['validation_loss']):.0f} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"unigram_loss": unigram, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
