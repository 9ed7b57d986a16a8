"""Issue 13: nothing from a checkpoint runs unless asked; bad fine-tuning data stops before training, naming the row."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_genssl import cli

# Imported by transformers only when it executes the checkpoint's code: writing the marker proves code ran.
MARKER_CODE = '''
import os, pathlib
pathlib.Path(os.environ["GENSSL_TEST_MARKER"]).write_text("code from the checkpoint ran")
'''


def _evil_checkpoint(folder: Path) -> Path:
    """A folder whose config names a model type nobody registered, with an auto_map into its own module."""
    folder.mkdir()
    (folder / "evil.py").write_text(MARKER_CODE + "from transformers import PretrainedConfig\n"
                                    "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    auto = {name: "evil.EvilConfig" for name in ("AutoConfig", "AutoModelForCausalLM", "AutoModelForPreTraining",
                                                 "AutoModelForSequenceClassification", "AutoModelForMaskedLM")}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto}))
    save_file({"weight": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "marker"
    monkeypatch.setenv("GENSSL_TEST_MARKER", str(path))
    return path


@pytest.fixture
def genssl_checkpoint(tmp_path, tokenizer) -> Path:
    """A real (tiny) GenSSL checkpoint whose copied modeling file was replaced by code that writes the marker."""
    from hf_genssl import GenSSLForPreTraining
    from tests.conftest import tiny_config

    folder = tmp_path / "genssl"
    GenSSLForPreTraining(tiny_config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" in config
    for name in ("modeling_genssl.py", "configuration_genssl.py"):
        (folder / name).write_text(MARKER_CODE + (folder / name).read_text())
    return folder


@pytest.mark.parametrize("command", ["generate", "eval-ppl", "finetune"])
def test_cli_refuses_checkpoint_code_without_the_flag(tmp_path, marker, capsys, command):
    evil = _evil_checkpoint(tmp_path / f"evil_{command.replace('-', '_')}")  # one module name per case
    data = tmp_path / "texts.txt"
    data.write_text("some text to score\n\nand some more")
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"text number {i},{i % 2}\n" for i in range(20)))
    args = {"generate": ["--prompt", "hello"], "eval-ppl": ["--data", str(data)],
            "finetune": ["--task", str(train), "--output-dir", str(tmp_path / "ft")]}[command]
    assert cli.main([command, "--model", str(evil), *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # (progress bars of the data loading come before)
    assert error.startswith(f"genssl {command}: error: ") and "was not run" in error and "--trust-remote-code" in error
    assert not marker.exists()

    # the flag is what lets it run (the command then fails: the crafted class is no model, but its code has run)
    with contextlib.suppress(Exception):
        assert cli.main([command, "--model", str(evil), *args, "--trust-remote-code"]) != 0
    assert marker.exists()


def test_genssl_checkpoints_load_through_the_registered_classes(genssl_checkpoint, marker, capsys):
    """A GenSSL checkpoint ships its modeling code (for users without hf_genssl), but the CLI and prefix_perplexity
    load it with the installed package's classes: the copied files, here rigged, never run."""
    from hf_genssl.perplexity import prefix_perplexity

    assert cli.main(["generate", "--model", str(genssl_checkpoint), "--prompt", "the of", "--max-new-tokens", "3"]) == 0
    result = prefix_perplexity(str(genssl_checkpoint), ["the of and to a in that is"])
    assert result.tokens_scored > 0
    assert not marker.exists()


@pytest.mark.parametrize("files, message", [
    ({"train.csv": "sentence,label\n" + "a,0\nb,1\nc,0\nd,-1\ne,1\n"},
     r"train\.csv: train row 3 \(line 5\) has label -1: class labels must be >= 0\."),
    ({"train.csv": "sentence,label\n" + "a,0.5\nb,nan\nc,2.0\n", "dev.csv": "sentence,label\nd,1.0\n"},
     r"train\.csv: train row 1 \(line 3\) has label .*nan.*: regression targets must be finite numbers\."),
    ({"train.jsonl": '{"sentence": "a", "label": 0}\n{"sentence": "b", "label": 1}\n', "validation.jsonl": "\n"},
     r"validation\.jsonl: the validation split is empty"),
    ({"train.csv": "sentence,label\na,x\nb,y\n", "validation.csv": "sentence,label\n"},
     r"validation\.csv: the validation split is empty"),
])
def test_finetuning_data_is_checked_before_anything_is_loaded(tmp_path, capsys, files, message):
    data = tmp_path / "data"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    # no model at that path: the data must be refused before the model is even looked for
    assert cli.main(["finetune", "--model", str(tmp_path / "no-model"), "--task", str(data),
                     "--output-dir", str(tmp_path / "ft")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("genssl finetune: error: ")
    assert re.search(message, error), error


def test_finetuning_labels_are_checked_against_the_task(tmp_path):
    from datasets import Dataset

    from hf_genssl.data.tasks import check_labels

    with pytest.raises(ValueError, match=r"task x: train row 2 has label 5: class labels must be in \[0, 3\)"):
        check_labels(Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [0, 2, 5]}), "train", "task x",
                     num_labels=3)
    check_labels(Dataset.from_dict({"sentence": ["a"], "label": [2]}), "train", "task x", num_labels=3)
