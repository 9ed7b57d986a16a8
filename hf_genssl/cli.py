"""The ``genssl`` command line: one entry point for the package's jobs.

    genssl demo                      # prepare data, pretrain the tiny semi-AR model, show loss curve and a sample
    genssl data prepare              # fetch and build the offline datasets
    genssl pretrain --config tiny    # the Accelerate pretraining loop (configs: hf_genssl/configs/*.yaml)
    genssl finetune --model DIR --task rt-polarity
    genssl eval-ppl --model DIR --data validation
    genssl generate --model DIR --prompt "..." [--group-size 2]
    genssl theory --out DIR          # the paper's Theorem 4.2 toy model, numerically

Each command imports what it runs (datasets, Trainer, accelerate) only when called; ``genssl --help`` still
takes a few seconds, because importing the package registers the models with transformers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _read_texts(data: str, limit: int | None, cache_dir: str | None) -> tuple[list[str], str]:
    """Texts from a corpus split name (train/validation/test of the offline corpus) or a .txt/.jsonl file."""
    path = Path(data)
    if path.exists():
        if path.suffix == ".jsonl":
            texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
        else:
            texts = [block for block in path.read_text().split("\n\n") if block.strip()]
        source = str(path)
    else:
        from hf_genssl.data import load_pretraining_corpus

        corpus = load_pretraining_corpus(cache_dir=cache_dir)
        if data not in corpus:
            raise SystemExit(f"--data must be a file or one of the corpus splits {list(corpus)}, got {data!r}.")
        texts = list(corpus[data]["text"])
        source = f"offline corpus, split {data}"
    return (texts[:limit] if limit else texts), source


def cmd_eval_ppl(args: argparse.Namespace) -> int:
    from hf_genssl.perplexity import plot_prefix_curves, prefix_perplexity

    texts, source = _read_texts(args.data, args.limit, args.cache_dir)
    result = prefix_perplexity(args.model, texts, window=args.window, stride=args.stride,
                               batch_size=args.batch_size, bucket_size=args.bucket_size, progress=True,
                               trust_remote_code=args.trust_remote_code)
    summary = {"model": args.model, "data": source, "texts": len(texts), **result.to_dict()}
    print(f"prefix perplexity {result.perplexity:.2f} ({result.method}) on {source}: {result.tokens_scored} tokens "
          f"in {result.windows} windows of {result.window} (stride {result.stride})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "prefix_perplexity.json").write_text(json.dumps(summary, indent=2))
        plot_prefix_curves({Path(args.model).name: result}, out / "prefix_perplexity.png")
        print(f"wrote {out / 'prefix_perplexity.json'} and {out / 'prefix_perplexity.png'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from hf_genssl.hub import from_pretrained

    trust = args.trust_remote_code
    config = from_pretrained(AutoConfig, args.model, trust_remote_code=trust)
    tokenizer = from_pretrained(AutoTokenizer, args.model, trust_remote_code=trust)
    ids = torch.tensor([tokenizer(args.prompt)["input_ids"]])
    options = dict(do_sample=args.sample, top_k=args.top_k, top_p=args.top_p)
    if getattr(config, "content_attention", "causal") == "bidirectional":
        model = from_pretrained(AutoModelForMaskedLM, args.model, trust_remote_code=trust).eval()
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, strategy=args.strategy, **options)
    else:
        model = from_pretrained(AutoModelForCausalLM, args.model, trust_remote_code=trust).eval()
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, group_size=args.group_size, **options)
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hf_genssl.demo import run_demo

    run_demo(args.output_dir, steps=args.steps, finetune=not args.no_finetune, cache_dir=args.cache_dir)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from hf_genssl.pretraining import parse_overrides, run_pretraining

    overrides = parse_overrides(args.override)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    if args.push_to_hub:
        overrides.update(push_to_hub=True, hub_model_id=args.hub_model_id)
    result = run_pretraining(args.config, overrides, resume=args.resume)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from hf_genssl.finetuning import run_finetuning

    result = run_finetuning({"model": args.model, "task": args.task, "output_dir": args.output_dir,
                             "epochs": args.epochs, "learning_rate": args.learning_rate,
                             "batch_size": args.batch_size, "max_train_samples": args.max_train_samples,
                             "lora": args.lora, "push_to_hub": args.push_to_hub, "hub_model_id": args.hub_model_id,
                             "trust_remote_code": args.trust_remote_code})
    print(json.dumps(result["final"], indent=2))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from hf_genssl.reproduce import default_out, run_reproduce, update_readme

    out = args.out or default_out(args.scale, args.quick)
    if args.report_only:
        from pathlib import Path

        from hf_genssl.reproduce import summarise

        if not any(Path(out).glob("*/*.json")):
            raise SystemExit(f"genssl reproduce --report-only: no results in {out}/ (run without --report-only first).")
        print(summarise(Path(out), args.quick))
    else:
        print(run_reproduce(out, scale=args.scale, quick=args.quick, experiments=tuple(args.experiments),
                            cache_dir=args.cache_dir, glue=args.glue))
    if args.readme:
        update_readme(args.readme, out)
    return 0


def cmd_theory(args: argparse.Namespace) -> int:
    from hf_genssl import theory

    return theory.main(["--out", args.out]) or 0


def _add_trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run Python code shipped with the checkpoint (never needed for GenSSL checkpoints; "
                             "only for checkpoints whose author you trust)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genssl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="data -> pretrain the tiny semi-AR model -> samples -> fine-tune (minutes)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--steps", type=int, help="pretraining steps (default: the tiny config's)")
    p.add_argument("--no-finetune", action="store_true", help="stop after pretraining and sampling")
    p.add_argument("--cache-dir", help="data cache (default: $GENSSL_CACHE or ~/.cache/hf_genssl)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="the Accelerate pretraining loop (configs: hf_genssl/configs/*.yaml)")
    p.add_argument("--config", default="tiny", help="a shipped config (tiny, small, paper, vit_tiny) or a .yaml file")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--output-dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--push-to-hub", action="store_true", help="push the final checkpoint (model, code, tokenizer, card)")
    p.add_argument("--hub-model-id", help="repo id to push to (default: the run directory's name)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a checkpoint on a GLUE-style task with Trainer")
    p.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    p.add_argument("--task", required=True, help="offline task, glue/<task>, or GLUE-format files")
    p.add_argument("--output-dir", default="runs/finetune")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--lora", action="store_true")
    p.add_argument("--push-to-hub", action="store_true")
    p.add_argument("--hub-model-id")
    _add_trust_flag(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("eval-ppl", help="exact prefix perplexity of a checkpoint (the paper's Eq. 2)")
    p.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    p.add_argument("--data", default="validation", help="corpus split (train/validation/test) or a .txt/.jsonl file")
    p.add_argument("--window", type=int, help="text tokens per window (default: the model's positions - 1)")
    p.add_argument("--stride", type=int, help="window stride (default: the window)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bucket-size", type=int, default=8, help="prefix-length bucket width for the curve")
    p.add_argument("--limit", type=int, help="score only the first N texts")
    p.add_argument("--cache-dir", help="data cache (default: $GENSSL_CACHE or ~/.cache/hf_genssl)")
    p.add_argument("--out", help="write prefix_perplexity.json and .png here")
    _add_trust_flag(p)
    p.set_defaults(func=cmd_eval_ppl)

    p = sub.add_parser("generate", help="generate text from a checkpoint")
    p.add_argument("--model", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--group-size", type=int, default=1, help="tokens per forward pass (semi-AR checkpoints)")
    p.add_argument("--strategy", default="left_to_right", choices=["left_to_right", "confidence"],
                   help="unmasking order (masked checkpoints)")
    p.add_argument("--sample", action="store_true")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    _add_trust_flag(p)
    p.set_defaults(func=cmd_generate)

    from hf_genssl.reproduce import EXPERIMENTS

    p = sub.add_parser("reproduce", help="the paper's comparisons at small scale, with seeds (writes RESULTS.md)")
    p.add_argument("--out", help="results folder (default: results/<scale>; a resumed run skips the cells in it)")
    p.add_argument("--quick", action="store_true", help="a smoke run of the same code path (not evidence)")
    p.add_argument("--scale", default="default", choices=["small", "default", "gpu"],
                   help="small: ~25 min on 2 CPU cores; default: ~5 hours (resumable); gpu: one large GPU")
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument("--cache-dir")
    p.add_argument("--readme", help="also copy RESULTS.md into this README's generated results block")
    p.add_argument("--glue", action="store_true", help="also fine-tune on real GLUE (needs the Hub; use a fresh --out)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: regenerate RESULTS.md and the plots from the JSON files in the results folder")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("theory", help="co-occurrence spectra of the paper's Theorem 4.2 toy model")
    p.add_argument("--out", default="results/theory")
    p.set_defaults(func=cmd_theory)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub) -> None:
    """Commands whose modules live elsewhere in the package register themselves here."""
    from hf_genssl.data.cli import add_data_commands

    add_data_commands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from hf_genssl.data.sources import DataUnavailableError
    from hf_genssl.hub import HubPushError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, DataUnavailableError, HubPushError) as error:  # one line, no traceback
        print(f"genssl {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
