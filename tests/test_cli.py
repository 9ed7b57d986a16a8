"""The `genssl` command line: every config field is a flag, `--version`, and the commands that load no model start
without torch or transformers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_genssl import cli

REPO = Path(__file__).resolve().parents[1]


def _genssl(*args: str, cwd: Path, importtime: bool = False) -> subprocess.CompletedProcess:
    """`python -m hf_genssl.cli ARGS` in a fresh interpreter (what the `genssl` script runs)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "hf_genssl.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _imported(importtime_stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:")}


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("theory", "--help"), ("data", "--help")])
def test_commands_that_need_no_model_import_neither_torch_nor_transformers(args, tmp_path):
    """`genssl --help` took ~5 s (12 s on a loaded machine) because importing the package registered the models,
    which imports torch and transformers."""
    result = _genssl(*args, cwd=tmp_path, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = _imported(result.stderr)
    assert "hf_genssl" in modules  # (the cli module itself runs as __main__)
    assert not {"torch", "transformers", "accelerate", "datasets"} & modules


def test_version(tmp_path):
    from importlib.metadata import version

    import hf_genssl

    result = _genssl("--version", cwd=tmp_path)
    assert result.stdout.strip() == f"genssl (hf_genssl) {hf_genssl.__version__}"
    assert hf_genssl.__version__ == version("hf_genssl")


def test_importing_the_package_still_registers_the_models():
    """The lazy package must keep its promise: `import hf_genssl` then the Auto classes know `genssl`."""
    code = ("import hf_genssl, transformers; c = transformers.AutoConfig.for_model('genssl', hidden_size=32, "
            "num_attention_heads=4); print(type(transformers.AutoModel.from_config(c)).__name__)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.stdout.strip() == "GenSSLModel", result.stderr[-2000:]


PIP_CONSOLE_SCRIPT = """import sys
from hf_genssl.cli import main
if __name__ == '__main__':
    sys.argv[0] = sys.argv[0].removesuffix('.exe')
    sys.exit(main())
"""


def test_the_installed_console_script_starts_without_torch(tmp_path):
    """The `genssl` wrapper pip writes (content as pip 25 writes it) is recognised, so `--help` stays fast."""
    script = tmp_path / "bin" / "genssl"
    script.parent.mkdir()
    script.write_text(PIP_CONSOLE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-X", "importtime", str(script), "--help"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: genssl" in result.stdout
    assert not {"torch", "transformers"} & _imported(result.stderr)


def test_a_users_own_script_named_genssl_still_gets_the_models_registered(tmp_path):
    """Only pip's wrapper skips registration at import: a user's `genssl.py` that imports the package must find the
    Auto classes ready (the check once went by the script's name alone)."""
    script = tmp_path / "genssl.py"
    script.write_text("import hf_genssl, transformers\n"
                      "c = transformers.AutoConfig.for_model('genssl', hidden_size=32, num_attention_heads=4)\n"
                      "print(type(transformers.AutoModel.from_config(c)).__name__)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=300)
    assert result.stdout.strip() == "GenSSLModel", result.stderr[-2000:]


def test_every_pretraining_field_is_a_flag_and_only_given_flags_override_the_config(monkeypatch):
    from hf_genssl.pretraining import PretrainConfig, load_config

    parser = cli._pretrain_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    for field in dataclasses.fields(PretrainConfig):
        assert f"--{field.name}" in options and f"--{field.name.replace('_', '-')}" in options, field.name

    seen = {}
    monkeypatch.setattr("hf_genssl.pretraining.run_pretraining",
                        lambda config, overrides, resume: seen.update(config=config, overrides=overrides,
                                                                      resume=resume) or {"final_dir": "x"})
    assert cli.main(["pretrain", "--config", "tiny", "--max-steps", "5", "--group_size", "random",
                     "--mask_ratio_range", "0.1", "0.9", "--no_progress", "--report-to", "[tensorboard, wandb]",
                     "--learning_rate", "1e-4", "--override", "seed=3", "--override", "max_steps=9"]) == 0
    assert seen["overrides"] == {"max_steps": 5, "group_size": "random", "mask_ratio_range": [0.1, 0.9],
                                 "progress": False, "report_to": ["tensorboard", "wandb"], "learning_rate": 1e-4,
                                 "seed": 3}  # a flag wins over --override; untouched keys stay the config's
    config = load_config(seen["config"], seen["overrides"])
    assert config.hidden_size == load_config("tiny").hidden_size and config.max_steps == 5
    assert cli.main(["pretrain", "--group-size", "3", "--resume"]) == 0
    assert seen["overrides"] == {"group_size": 3} and seen["resume"] is True and seen["config"] == "tiny"


def test_pretrain_command_releases_the_process_group_it_ends_in(monkeypatch, tmp_path):
    """Under `accelerate launch` `genssl pretrain` left the process group to the interpreter's teardown."""
    import torch.distributed as dist

    monkeypatch.setattr("hf_genssl.pretraining.run_pretraining", lambda config, overrides, resume: {"steps": 1})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert cli.main(["pretrain", "--config", "tiny"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_every_finetuning_field_is_a_flag(monkeypatch):
    """`max_eval_samples`, `max_length`, `lora_r` and `seed` could not be set from the command line."""
    from hf_genssl.finetuning import FinetuneConfig

    seen = {}
    monkeypatch.setattr("hf_genssl.finetuning.run_finetuning", lambda config: seen.update(config) or {"final": {}})
    assert cli.main(["finetune", "--model", "m", "--task", "rt-polarity", "--max_eval_samples", "10",
                     "--max-length", "64", "--lora", "--lora_r", "4", "--seed", "3", "--report_to", "tensorboard",
                     "--epochs", "0.5", "--trust-remote-code"]) == 0
    assert seen == {"model": "m", "task": "rt-polarity", "output_dir": "runs/finetune", "max_eval_samples": 10,
                    "max_length": 64, "lora": True, "lora_r": 4, "seed": 3, "report_to": "tensorboard",
                    "epochs": 0.5, "trust_remote_code": True}
    FinetuneConfig(**seen)  # a valid config
    options = {option for action in cli._finetune_parser()._actions for option in action.option_strings}
    assert {f"--{field.name}" for field in dataclasses.fields(FinetuneConfig)} <= options
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--task", "rt-polarity"])  # --model is required


def test_unknown_flags_are_still_usage_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["theory", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["pretrain", "--max_stepz", "3"])


@pytest.mark.slow
def test_the_command_line_registers_the_models_for_commands_that_load_one(tmp_path, tokenizer):
    """Started as `genssl`, the package skips registration at import; eval-ppl must still load a GenSSL checkpoint
    through the registered classes (no --trust-remote-code)."""
    from hf_genssl import GenSSLForCausalLM
    from tests.conftest import tiny_config

    GenSSLForCausalLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "texts.txt").write_text("the of and to a in that is\n\nwas he for it with as his on be")
    result = _genssl("eval-ppl", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "texts.txt"),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"prefix perplexity \d", result.stdout)


def test_eval_ppl_trailing_masks_flag_reaches_the_measurement(tmp_path, tokenizer, capsys):
    """`genssl eval-ppl --trailing-masks H` scores a masked checkpoint with exactly H masks after each prefix: the
    JSON it writes equals `prefix_perplexity(..., trailing_masks=H)` and differs from the default reading; a causal
    checkpoint is a one-line error (exit 2)."""
    import torch

    from hf_genssl import GenSSLForCausalLM, GenSSLForMaskedLM
    from hf_genssl.perplexity import prefix_perplexity
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    texts = ["the of and to a in that is was he for it with as his on be", "at by i this had not are but from or"]
    (tmp_path / "texts.txt").write_text("\n\n".join(texts))
    masked = GenSSLForMaskedLM(tiny_config(vocab_size=len(tokenizer), content_attention="bidirectional")).eval()
    masked.save_pretrained(tmp_path / "masked")
    tokenizer.save_pretrained(tmp_path / "masked")
    args = ["eval-ppl", "--model", str(tmp_path / "masked"), "--data", str(tmp_path / "texts.txt"), "--window", "12",
            "--stride", "6"]
    assert cli.main([*args, "--trailing-masks", "2", "--out", str(tmp_path / "h2")]) == 0
    written = json.loads((tmp_path / "h2" / "prefix_perplexity.json").read_text())
    expected = prefix_perplexity(masked, texts, tokenizer, window=12, stride=6, trailing_masks=2)
    default = prefix_perplexity(masked, texts, tokenizer, window=12, stride=6)
    assert written["trailing_masks"] == 2
    assert written["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert written["perplexity"] != pytest.approx(default.perplexity, rel=1e-4)

    GenSSLForCausalLM(tiny_config(vocab_size=len(tokenizer))).save_pretrained(tmp_path / "causal")
    tokenizer.save_pretrained(tmp_path / "causal")
    capsys.readouterr()
    assert cli.main(["eval-ppl", "--model", str(tmp_path / "causal"), "--data", str(tmp_path / "texts.txt"),
                     "--trailing-masks", "1"]) == 2
    assert "trailing_masks applies to masked" in capsys.readouterr().err
