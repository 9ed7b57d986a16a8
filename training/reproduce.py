"""Reproduce the paper's comparisons: the same as ``genssl reproduce`` (see ``hf_genssl/reproduce.py``).

    python training/reproduce.py --quick            # smoke run, about 12 minutes on 2 cores (not evidence)
    python training/reproduce.py --scale small      # about 70 minutes on 2 cores
    python training/reproduce.py                    # the default scale, ~6-8 hours on 2 cores (resumable)
    python training/reproduce.py --scale gpu        # the GPU scale (bf16)

The experiment definitions (cells, scales) are in ``hf_genssl/configs/experiments/reproduce.yaml``; the code that
runs them is ``hf_genssl/reproduce.py``.
"""

import sys

from hf_genssl.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
