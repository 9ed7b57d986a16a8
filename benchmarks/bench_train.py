"""Training-step speed of the GenSSL models against transformers' GPT-2, BERT and XLNet, side by side.

Every model has the same size (4 layers, hidden 256, 4 heads, MLP 1024, seq 128, batch 16, vocab 8192) and
does forward + backward + AdamW step on the batch its objective needs. Steps are interleaved across models
(round-robin) and the median is reported, so machine noise hits all models alike; only the printed
ratios are meaningful, not the absolute milliseconds.

    python benchmarks/bench_train.py [--steps 10] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    XLNetConfig,
    XLNetLMHeadModel,
)

from hf_genssl import (
    DataCollatorForSemiAutoregressiveLM,
    DataCollatorForVariableLengthMasking,
    GenSSLConfig,
    GenSSLForPreTraining,
)

LAYERS, HIDDEN, HEADS, SEQ, BATCH, VOCAB = 4, 256, 4, 128, 16, 8192
BOS, PAD, MASK = 1, 0, 4


class _Tok:
    """The few tokenizer attributes transformers' MLM collator reads (no Hub, no training needed)."""

    bos_token_id, pad_token_id, mask_token_id, eos_token_id = BOS, PAD, MASK, 2
    all_special_ids = [0, 1, 2, 3, 4]
    mask_token, pad_token = "<mask>", "<pad>"

    def __len__(self) -> int:
        return VOCAB

    def get_special_tokens_mask(self, ids, already_has_special_tokens=True):
        return [int(i in self.all_special_ids) for i in ids]

    def convert_tokens_to_ids(self, token: str) -> int:
        return {"<mask>": MASK, "<pad>": PAD}[token]


def token_rows(generator: torch.Generator) -> list[list[int]]:
    """BATCH rows of SEQ - 1 tokens (the GenSSL collators add a BOS in front)."""
    return torch.randint(5, VOCAB, (BATCH, SEQ - 1), generator=generator).tolist()


def genssl(content_attention: str) -> GenSSLForPreTraining:
    return GenSSLForPreTraining(
        GenSSLConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=4 * HIDDEN, max_position_embeddings=SEQ, content_attention=content_attention)
    )


def xlnet_batch(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """XLNet two-stream pretraining with every position a target (a random factorisation order per row)."""
    ids = torch.randint(5, VOCAB, (BATCH, SEQ), generator=generator)
    order = torch.argsort(torch.rand(BATCH, SEQ, generator=generator), dim=1)
    rank = torch.argsort(order, dim=1)  # rank[b, i] = place of token i in the order
    perm_mask = (rank[:, None, :] >= rank[:, :, None]).float()  # 1 = i may NOT attend j (XLNet convention)
    target_mapping = torch.eye(SEQ).expand(BATCH, SEQ, SEQ).contiguous()
    return {"input_ids": ids, "perm_mask": perm_mask, "target_mapping": target_mapping, "labels": ids}


def build_cases(generator: torch.Generator) -> dict[str, tuple[torch.nn.Module, Callable[[], dict]]]:
    sar2 = DataCollatorForSemiAutoregressiveLM(bos_token_id=BOS, pad_token_id=PAD, group_size=2, seed=0)
    sar1 = DataCollatorForSemiAutoregressiveLM(bos_token_id=BOS, pad_token_id=PAD, group_size=1, seed=0)
    masked = DataCollatorForVariableLengthMasking(bos_token_id=BOS, pad_token_id=PAD, mask_token_id=MASK,
                                                  vocab_size=VOCAB, mask_ratio_range=(0.15, 0.15), seed=0)
    bert_collator = DataCollatorForLanguageModeling(_Tok(), mlm_probability=0.15)
    fixed = token_rows(generator)
    sar2_batch, sar1_batch = sar2(fixed), sar1(fixed)
    masked_batch = masked(fixed)
    gpt_ids = torch.tensor([[BOS] + row for row in fixed])
    bert_inputs, bert_labels = bert_collator.torch_mask_tokens(gpt_ids.clone())
    xlnet = xlnet_batch(generator)

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=HIDDEN, n_layer=LAYERS,
                                      n_head=HEADS, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0,
                                      bos_token_id=BOS, eos_token_id=2))
    bert = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                      num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
                                      max_position_embeddings=SEQ, hidden_dropout_prob=0,
                                      attention_probs_dropout_prob=0))
    xl = XLNetLMHeadModel(XLNetConfig(vocab_size=VOCAB, d_model=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                      d_inner=4 * HIDDEN, dropout=0.0))
    return {
        "gpt2 (AR)": (gpt2, lambda: {"input_ids": gpt_ids, "labels": gpt_ids}),
        "bert-mlm 15%": (bert, lambda: {"input_ids": bert_inputs, "labels": bert_labels}),
        "xlnet two-stream": (xl, lambda: xlnet),
        "genssl semi-AR g=2": (genssl("causal"), lambda: {**sar2_batch, "only_target_logits": True}),
        "genssl AR g=1": (genssl("causal"), lambda: {**sar1_batch, "only_target_logits": True}),
        "genssl masked 15%": (genssl("bidirectional"), lambda: {**masked_batch, "only_target_logits": True}),
        # what Trainer calls: no extra argument (only_target_logits defaults to on in training mode)
        "genssl masked 15% plain forward": (genssl("bidirectional"), lambda: masked_batch),
    }, {"semi-AR collator": lambda: sar2(fixed), "masking collator": lambda: masked(fixed)}


def time_steps(cases, steps: int) -> dict[str, list[float]]:
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(steps + 2):  # two warm-up rounds
        for name, (model, make_batch) in cases.items():
            model.train()
            batch = make_batch()
            start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            if round_index >= 2:
                times[name].append(time.perf_counter() - start)
    return times


def time_collators(collators, repeats: int = 20) -> dict[str, float]:
    result = {}
    for name, fn in collators.items():
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        result[name] = statistics.median(samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    cases, collators = build_cases(generator)
    times = time_steps(cases, args.steps)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    collator_ms = {name: 1000 * t for name, t in time_collators(collators).items()}

    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, seq {SEQ}, batch {BATCH}, vocab {VOCAB}; "
          f"median of {args.steps} interleaved steps")
    print(f"{'model':24s} {'ms/step':>9s} {'x GPT-2':>8s} {'x BERT':>8s}")
    for name, value in ms.items():
        print(f"{name:24s} {value:9.1f} {value / ms['gpt2 (AR)']:8.2f} {value / ms['bert-mlm 15%']:8.2f}")
    for name, value in collator_ms.items():
        print(f"{name:24s} {value:9.2f} ms/batch  = {100 * value / ms['genssl semi-AR g=2']:.2f}% of a semi-AR step")
    targets = {
        "semi-AR step / GPT-2 step (target <= 1.2)": ms["genssl semi-AR g=2"] / ms["gpt2 (AR)"],
        "masked step / BERT step (target <= 0.7)": ms["genssl masked 15%"] / ms["bert-mlm 15%"],
        "XLNet step / GPT-2 step (reference)": ms["xlnet two-stream"] / ms["gpt2 (AR)"],
    }
    for name, value in targets.items():
        print(f"{name}: {value:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ms_per_step": ms, "collator_ms": collator_ms, "ratios": targets}, f, indent=2)


if __name__ == "__main__":
    main()
