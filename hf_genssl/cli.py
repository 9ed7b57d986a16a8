"""The ``genssl`` command line: one entry point for the package's jobs.

    genssl demo                      # prepare data, pretrain the tiny semi-AR model, show loss curve and a sample
    genssl data prepare              # fetch and build the offline datasets
    genssl pretrain --config tiny    # the Accelerate pretraining loop (configs: hf_genssl/configs/*.yaml)
    genssl finetune --model DIR --task rt-polarity
    genssl eval-ppl --model DIR --data validation
    genssl generate --model DIR --prompt "..." [--group-size 2]
    genssl theory --out DIR          # the paper's Theorem 4.2 toy model, numerically

Each command imports what it runs (datasets, Trainer, accelerate) only when called, and registers the models
with transformers only if it loads one: ``genssl --help``, ``--version``, ``theory`` and ``data`` do not import
torch. ``pretrain`` and ``finetune`` take every field of their config dataclass as a flag
(``transformers.HfArgumentParser``: ``genssl pretrain --max-steps 50 --group-size random``); see
``genssl pretrain --help``.
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
                               trust_remote_code=args.trust_remote_code, trailing_masks=args.trailing_masks)
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


def _yaml_value(text: str):
    """A flag's value read as YAML, like ``--override``: ``2``, ``random``, ``[2, 3]``, ``null``."""
    import yaml

    return yaml.safe_load(text)


def config_parser(dataclass_type, prog: str, description: str, defaults: dict | None = None):
    """A ``transformers.HfArgumentParser`` with one flag per field of ``dataclass_type`` (``--max_steps`` and
    ``--max-steps``) whose result holds only the flags given, so a config file's values are kept unless a flag
    says otherwise. Fields typed as a union of several types (``group_size``: ``2``, ``[2, 3]`` or ``random``)
    and dict fields take one YAML value. ``defaults`` are CLI defaults for fields (e.g. ``output_dir``)."""
    import copy
    import dataclasses
    import types
    import typing

    from transformers import HfArgumentParser

    class ConfigParser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            kinds = [t for t in typing.get_args(field.type) if t is not type(None)]
            polymorphic = typing.get_origin(field.type) in (typing.Union, types.UnionType) and len(kinds) > 1
            if polymorphic or field.type is dict or typing.get_origin(field.type) is dict:
                names = [f"--{field.name}", *([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])]
                parser.add_argument(*names, type=_yaml_value, metavar="YAML")
            else:  # a copy: HfArgumentParser narrows field.type in place
                HfArgumentParser._parse_dataclass_field(parser, copy.copy(field))

    parser = ConfigParser(dataclass_type, prog=prog, description=description)
    fields = {field.name: field for field in dataclasses.fields(dataclass_type)}
    for action in parser._actions:
        field = fields.get(action.dest)
        if field is None:
            continue
        action.required = False
        if action.dest in (defaults or {}):
            action.default = defaults[action.dest]
        else:
            action.default = argparse.SUPPRESS
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else "required")
        default = (defaults or {}).get(field.name, default)
        if action.option_strings and not action.option_strings[0].startswith("--no"):
            action.help = f"{dataclass_type.__name__}.{field.name} (default: {default!r})"
    return parser


def _pretrain_parser():
    from hf_genssl.pretraining import PretrainConfig

    parser = config_parser(PretrainConfig, "genssl pretrain", "The Accelerate pretraining loop. Values come from "
                           "--config, then --override KEY=VALUE, then the flags below (each a PretrainConfig field).")
    parser.add_argument("--config", default="tiny",
                        help="a shipped config (tiny, small, paper, vit_tiny) or a .yaml file (default: tiny)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key (value read as YAML); repeatable")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    return parser


def cmd_pretrain(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from hf_genssl.pretraining import parse_overrides, run_pretraining

    flags = vars(_pretrain_parser().parse_args(args.rest))
    config, resume = flags.pop("config"), flags.pop("resume")
    overrides = {**parse_overrides(flags.pop("override")), **flags}
    result = run_pretraining(config, overrides, resume=resume)
    state = PartialState()
    if state.is_main_process:  # under DDP every process returns the same result: print it once
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    # Under `accelerate launch` this process ends here. run_pretraining leaves the process group to its caller (a
    # user's script may go on using it); the command is the caller, so it releases gloo / NCCL before the
    # interpreter's teardown does, where gloo can abort a finished run (SIGABRT) and NCCL warns. Accelerate's
    # helper: a no-op without a group, and for processes forked by notebook_launcher, whose parent owns it.
    state.destroy_process_group()
    return 0


def _finetune_parser():
    from hf_genssl.finetuning import FinetuneConfig

    return config_parser(FinetuneConfig, "genssl finetune", "Fine-tune a checkpoint on a GLUE-style task with "
                         "transformers' Trainer; every flag is a FinetuneConfig field.",
                         defaults={"output_dir": "runs/finetune"})


def cmd_finetune(args: argparse.Namespace) -> int:
    from hf_genssl.finetuning import run_finetuning

    parser = _finetune_parser()
    flags = vars(parser.parse_args(args.rest))
    missing = [f"--{name}" for name in ("model", "task") if name not in flags]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    result = run_finetuning(flags)
    print(json.dumps(result["final"], indent=2))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from hf_genssl.reproduce import default_out, run_reproduce, update_claims, update_readme

    out = args.out or default_out(args.scale, args.quick)
    if args.report_only:
        from pathlib import Path

        from hf_genssl.reproduce import summarise

        if not any(Path(out).glob("*/*.json")):
            raise SystemExit(f"genssl reproduce --report-only: no results in {out}/ (run without --report-only first).")
        print(summarise(Path(out), args.quick))
    else:
        print(run_reproduce(out, scale=args.scale, quick=args.quick, experiments=tuple(args.experiments),
                            cache_dir=args.cache_dir, glue=args.glue, cells=tuple(args.cells or ())))
    if args.readme:
        update_readme(args.readme, out)
    update_claims(out, args.readme)  # results/CLAIMS.md (and its README block): every scale's verdicts side by side
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (Accelerate's INFO lines too)")
    from hf_genssl import __version__

    parser.add_argument("--version", action="version", version=f"genssl (hf_genssl) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="data -> pretrain the tiny semi-AR model -> samples -> fine-tune (minutes)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--steps", type=int, help="pretraining steps (default: the tiny config's)")
    p.add_argument("--no-finetune", action="store_true", help="stop after pretraining and sampling")
    p.add_argument("--cache-dir", help="data cache (default: $GENSSL_CACHE or ~/.cache/hf_genssl)")
    p.set_defaults(func=cmd_demo)

    # pretrain and finetune parse their own flags (one per config field, see config_parser): `genssl pretrain -h`
    p = sub.add_parser("pretrain", add_help=False,
                       help="the Accelerate pretraining loop (configs: hf_genssl/configs/*.yaml; -h for every flag)")
    p.set_defaults(func=cmd_pretrain, own_flags=True)
    p = sub.add_parser("finetune", add_help=False,
                       help="fine-tune a checkpoint on a GLUE-style task with Trainer (-h for every flag)")
    p.set_defaults(func=cmd_finetune, own_flags=True)

    p = sub.add_parser("eval-ppl", help="exact prefix perplexity of a checkpoint (the paper's Eq. 2)")
    p.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    p.add_argument("--data", default="validation", help="corpus split (train/validation/test) or a .txt/.jsonl file")
    p.add_argument("--window", type=int, help="text tokens per window (default: the model's positions - 1)")
    p.add_argument("--stride", type=int, help="window stride (default: the window)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bucket-size", type=int, default=8, help="prefix-length bucket width for the curve")
    p.add_argument("--trailing-masks", type=int, metavar="H",
                   help="masked checkpoints: read each token from its prefix + exactly H [MASK]s (default: [MASK]s to "
                        "the window's end, which tells the model where the window ends; see hf_genssl.perplexity)")
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
                   help="small: ~70 min on 2 CPU cores; default: ~6-8 hours (resumable); gpu: one large GPU")
    p.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    p.add_argument("--cells", nargs="+", metavar="CELL",
                   help="run only these cells and controls (names as in reproduce.yaml, e.g. ar bag_of_words); "
                        "RESULTS.md still reports every cell found")
    p.add_argument("--cache-dir")
    p.add_argument("--readme", help="also copy RESULTS.md into this README's generated results block (and "
                                    "results/CLAIMS.md, every scale's verdicts, into its claims block if it has one)")
    p.add_argument("--glue", action="store_true", help="also fine-tune on real GLUE (needs the Hub; use a fresh --out)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: regenerate RESULTS.md, the plots and results/CLAIMS.md from the JSON files")
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


# Commands that load no model: they run without registering the models (which imports torch and transformers).
_MODEL_FREE_COMMANDS = ("theory", "data")


def _one_line_errors() -> tuple[type[BaseException], ...]:
    """Errors shown as one line without a traceback: bad input, missing files, data or Hub unavailable."""
    from hf_genssl.data.sources import DataUnavailableError
    from hf_genssl.hub import HubPushError

    return ValueError, FileNotFoundError, DataUnavailableError, HubPushError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "own_flags", False):
        parser.parse_args(argv)  # argparse's usage error for the unknown arguments
    args.rest = rest
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    # Accelerate logs an INFO line per checkpoint save / load; shown with -v only.
    logging.getLogger("accelerate").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if args.command not in _MODEL_FREE_COMMANDS:
        from hf_genssl import register_auto_classes

        register_auto_classes()
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        if not isinstance(error, _one_line_errors()):
            raise
        print(f"genssl {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
