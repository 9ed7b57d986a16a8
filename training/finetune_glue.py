"""Fine-tune a GenSSL checkpoint (local or Hub id) on a GLUE-style task with transformers' Trainer.

    python training/finetune_glue.py --model runs/tiny/final --task rt-polarity --epochs 3
    python training/finetune_glue.py --model you/genssl-tiny --task glue/cola --lora
    python training/finetune_glue.py --model runs/tiny/final --task path/to/glue_files --push-to-hub
        --hub-model-id you/x

The same as ``genssl finetune``: the logic lives in ``hf_genssl.finetuning``; results go to OUTPUT_DIR/results.json.
"""

import sys

from hf_genssl.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
