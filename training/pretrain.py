"""Pretrain a GenSSL model with one Accelerate loop for every objective.

    python training/pretrain.py --config tiny                      # training/configs/tiny.yaml
    python training/pretrain.py --config tiny --override objective=ar --override max_steps=50
    python training/pretrain.py --config tiny --output-dir runs/x --resume
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 training/pretrain.py --config tiny   # CPU: gloo

The logic lives in ``hf_genssl.pretraining`` (so ``genssl pretrain`` runs the same code).
"""

from __future__ import annotations

import argparse
import json
import sys

from hf_genssl.pretraining import parse_overrides, run_pretraining


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", help="a YAML path or a name in training/configs")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", help="run directory (overrides the config's output_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.override)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    result = run_pretraining(args.config, overrides, resume=args.resume)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
