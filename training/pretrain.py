"""Pretrain a GenSSL model with one Accelerate loop for every objective.

    python training/pretrain.py --config tiny                      # the shipped config hf_genssl/configs/tiny.yaml
    python training/pretrain.py --config tiny --override objective=ar --override max_steps=50
    python training/pretrain.py --config tiny --output-dir runs/x --resume
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 training/pretrain.py --config tiny   # CPU: gloo

The same as ``genssl pretrain``: the logic lives in ``hf_genssl.pretraining``.
"""

import sys

from hf_genssl.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
