"""The pretraining loop: learning, bit-exact resume, atomic checkpoints, config checks, two-process DDP."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_genssl.pretraining import load_config, run_pretraining
from tests.conftest import make_texts

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    texts=make_texts(300, seed=1), vocab_size=400, seq_len=32, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, batch_size=8, learning_rate=3e-3, warmup_steps=3, log_every=5, eval_every=10,
    eval_batches=2, save_every=1000, progress=False,
)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["semi_ar", "variable_masked"])
def test_loss_falls(tmp_path, objective):
    overrides = {"mask_ratio_range": [0.1, 0.9]} if objective == "variable_masked" else {}
    result = run_pretraining({**TINY, **overrides, "objective": objective, "max_steps": 40,
                              "output_dir": str(tmp_path / objective)})
    losses = [r["loss"] for r in result["history"] if "loss" in r]
    assert losses[-1] < losses[0] - 0.5, losses
    final = tmp_path / objective / "final"
    for name in ("model.safetensors", "config.json", "modeling_genssl.py", "tokenizer.json", "README.md"):
        assert (final / name).exists(), name
    assert "auto_map" in json.loads((final / "config.json").read_text())


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(tmp_path):
    config = {**TINY, "objective": "semi_ar", "group_size": [1, 2, 3], "dropout": 0.1, "max_steps": 16}
    run_pretraining({**config, "output_dir": str(tmp_path / "straight")})

    interrupted = tmp_path / "interrupted"
    run_pretraining({**config, "output_dir": str(interrupted), "save_every": 6})
    # Simulate a kill after step 12's checkpoint: drop the final state and point `latest` back at step 12,
    # and leave a half-written checkpoint behind (as a kill mid-save would).
    shutil.rmtree(interrupted / "final")
    shutil.rmtree(interrupted / "checkpoint-16")
    (interrupted / "latest").write_text("checkpoint-12")
    (interrupted / "metrics.jsonl").unlink()
    (interrupted / "checkpoint-18.tmp").mkdir()
    run_pretraining({**config, "output_dir": str(interrupted), "save_every": 6}, resume=True)

    a, b = weights(tmp_path / "straight"), weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_refuses_to_resume_with_a_different_config(tmp_path):
    run_dir = tmp_path / "run"
    run_pretraining({**TINY, "max_steps": 4, "output_dir": str(run_dir)})
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(ValueError, match=r"differing keys: learning_rate"):
        run_pretraining({**TINY, "max_steps": 4, "learning_rate": 1e-2, "output_dir": str(run_dir)}, resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        run_pretraining({**TINY, "max_steps": 4, "output_dir": str(run_dir)})
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written is lost


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown config keys \['learnin_rate'\]"):
        load_config({"learnin_rate": 1e-3})
    with pytest.raises(ValueError, match="Unknown objective 'gpt'"):
        load_config({"objective": "gpt"})
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: semi_ar\nbatchsize: 3\n")
    with pytest.raises(ValueError, match="batchsize"):
        load_config(bad)
    with pytest.raises(ValueError, match="fixed ratio"):
        run_pretraining({**TINY, "objective": "masked", "mask_ratio_range": [0.1, 0.5], "max_steps": 1,
                         "output_dir": str(tmp_path / "m")})
    # the config's default range is BERT's fixed [0.15, 0.15]: a variable objective must not run on it silently
    with pytest.raises(ValueError, match=r"draws the mask ratio from a range.*use objective 'masked'"):
        run_pretraining({**TINY, "objective": "variable_masked", "max_steps": 1, "output_dir": str(tmp_path / "v")})
    with pytest.raises(ValueError, match=r"use objective 'vit_masked'"):
        run_pretraining({**TINY, "objective": "vit_variable_masked", "mask_ratio_range": [0.5, 0.5], "max_steps": 1,
                         "output_dir": str(tmp_path / "vv")})


@pytest.mark.parametrize("overrides, message", [
    ({"save_every": 0}, "save_every must be a positive integer, got 0"),
    ({"log_every": 0}, "log_every must be a positive integer, got 0"),
    ({"max_steps": "abc"}, "max_steps must be a positive integer, got 'abc'"),
    ({"batch_size": True}, "batch_size must be a positive integer, got True"),
    ({"group_size": 2.0}, r"group_size must be a positive integer or a list of them, or 'random', got 2.0"),
    ({"group_size": [2, 0]}, r"group_size must be"),
    ({"objective": "vit_semi_ar", "group_size": "random"}, "group_size must be a positive integer or a list of them,"),
    ({"objective": "vit_semi_ar", "image_size": 28, "patch_size": 14, "group_size": 4}, "no patch would be predicted"),
    ({"objective": "vit_semi_ar", "patch_size": 5}, r"patch_size \(5\) must divide image_size \(28\)"),
    ({"learning_rate": "fast"}, "learning_rate must be a number, got 'fast'"),
    ({"learning_rate": 0}, "learning_rate must be > 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"mask_ratio_range": [0.5, 0.1]}, "mask_ratio_range must be"),
    ({"mask_ratio_range": [0.1]}, "mask_ratio_range must be"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "multiple of num_attention_heads"),
    ({"progress": "yes"}, "progress must be true or false"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be a positive integer"),
    # the Hub repo is not guessed from the run folder's name (it was: a run in runs/pretrain went to user/pretrain)
    ({"push_to_hub": True}, "push_to_hub needs hub_model_id"),
    ({"push_to_hub": True, "hub_model_id": ""}, "push_to_hub needs hub_model_id"),
    ({"dataloader_num_workers": -1}, "dataloader_num_workers must be an integer >= 0"),
    ({"streaming": True, "dataloader_num_workers": 2}, "dataloader_num_workers must be 0 with streaming"),
    ({"gradient_checkpointing": "yes"}, "gradient_checkpointing must be true or false"),
    ({"compile": 1}, "compile must be true or false"),
    ({"attn_implementation": 3}, "attn_implementation must be a name"),
])
def test_config_values_are_checked_before_any_data_work(tmp_path, monkeypatch, overrides, message):
    import hf_genssl.data.pretraining_data as pretraining_data
    import hf_genssl.pretraining as pretraining

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the config was checked")

    monkeypatch.setattr(pretraining_data, "load_text_pretraining_data", no_data)
    monkeypatch.setattr(pretraining, "_image_data", no_data)
    with pytest.raises(ValueError, match=message):
        load_config("tiny", overrides)
    with pytest.raises(ValueError, match=message):  # and the loop fails the same way, before touching data
        run_pretraining({**TINY, **overrides, "output_dir": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


def test_config_yaml_quirks_are_read_as_meant():
    assert load_config("tiny", {"learning_rate": "1e-3"}).learning_rate == 1e-3  # YAML 1.1 reads 1e-3 as a string


def test_masked_ratio_mismatch_fails_before_data_work(tmp_path, monkeypatch):
    import hf_genssl.data.pretraining_data as pretraining_data

    monkeypatch.setattr(pretraining_data, "load_text_pretraining_data",
                        lambda *args, **kwargs: (_ for _ in ()).throw(AssertionError("data")))
    with pytest.raises(ValueError, match="draws the mask ratio from a range"):
        run_pretraining({**TINY, "objective": "variable_masked", "max_steps": 1, "output_dir": str(tmp_path / "v")})


def test_shipped_configs_load():
    from hf_genssl.configs import config_names, shipped_config

    assert {"tiny", "small", "paper", "vit_tiny"} <= set(config_names())
    for name in config_names():
        config = load_config(name)
        assert load_config(str(shipped_config(name))) == config
        loaded = asdict(config)
        for key, value in yaml.safe_load(shipped_config(name).read_text()).items():  # every value in the file is used
            assert loaded[key] == (float(value) if isinstance(loaded[key], float) else value), (name, key)
    assert load_config("paper").gradient_accumulation_steps == 4


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): only rank 0 writes, same losses."""
    config = {**TINY, "objective": "semi_ar", "group_size": 2, "max_steps": 6, "log_every": 1, "eval_every": 100}
    one = tmp_path / "one"
    run_pretraining({**config, "output_dir": str(one)})

    two = tmp_path / "two"
    script = tmp_path / "launch.py"
    script.write_text(
        "import json, sys\nfrom hf_genssl.pretraining import run_pretraining\n"
        "run_pretraining(json.loads(sys.argv[1]))\n"
        "from accelerate import PartialState\nPartialState().destroy_process_group()\n"  # as `genssl pretrain` ends
    )
    args = json.dumps({**config, "batch_size": 4, "output_dir": str(two)})  # same global batch of 8
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", "29517", str(script), args],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log_one, log_two = history(one), history(two)
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == list(range(1, 7))  # one writer
    for a, b in zip(log_one, log_two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-4)
    for a, b in zip(weights(one).values(), weights(two).values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["vit_semi_ar", "vit_variable_masked"])
def test_vision_objectives_run_through_the_same_loop(tmp_path, objective):
    from transformers import pipeline

    cache = os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache")
    result = run_pretraining("vit_tiny", {
        "objective": objective, "image_dataset": "mnist_5k", "max_images": 256, "max_steps": 16,
        "mask_ratio_range": [0.1, 0.9], "hidden_size": 32, "num_hidden_layers": 2, "batch_size": 32,
        "eval_every": 8, "log_every": 4, "save_every": 1000, "progress": False, "cache_dir": cache,
        "output_dir": str(tmp_path / "run"),
    })
    losses = [r["loss"] for r in result["history"] if "loss" in r]
    assert losses[-1] < losses[0], losses
    final = Path(result["final_dir"])
    assert (final / "preprocessor_config.json").exists() and (final / "modeling_genssl_vit.py").exists()
    classify = pipeline("image-classification", model=str(final), trust_remote_code=True)
    import numpy as np

    assert len(classify(np.zeros((28, 28, 1), dtype=np.uint8), top_k=2)) == 2


@pytest.mark.slow
def test_compared_objectives_see_the_same_examples_in_the_same_order(tmp_path, monkeypatch):
    """`genssl reproduce` compares runs that differ only in the objective: with one seed, every objective's collator
    receives the same examples (token blocks / images) in the same order; only what it predicts from what differs."""
    import hf_genssl.pretraining as pretraining

    received: list = []
    collate = pretraining._BatchSeededCollator.__call__
    monkeypatch.setattr(pretraining._BatchSeededCollator, "__call__",
                        lambda self, examples: received.append(examples) or collate(self, examples))

    runs = iter(range(100))

    def stream(config: dict) -> list:
        received.clear()
        run_pretraining({**config, "max_steps": 4, "eval_every": 1000, "output_dir": str(tmp_path / str(next(runs)))})
        return list(received)

    seen: dict[str, list] = {}
    for objective, extra in [("ar", {}), ("semi_ar", {"group_size": "random"}), ("masked", {}),
                             ("variable_masked", {"mask_ratio_range": [0.1, 0.9]})]:
        seen[objective] = stream({**TINY, "objective": objective, **extra, "seed": 3})
    assert seen["ar"] and all(batches == seen["ar"] for batches in seen.values())
    assert stream({**TINY, "objective": "ar", "seed": 4}) != seen["ar"]  # the seed does change the order

    cache = os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache")
    vit = {"image_dataset": "mnist_5k", "max_images": 64, "hidden_size": 32, "num_hidden_layers": 1,
           "batch_size": 8, "save_every": 1000, "progress": False, "cache_dir": cache, "seed": 3}
    images = {objective: stream({**vit, "objective": objective, "mask_ratio_range": [0.1, 0.9]})
              for objective in ("vit_ar", "vit_semi_ar", "vit_variable_masked")}
    first = images["vit_ar"]
    for batches in images.values():
        assert len(batches) == len(first)
        for batch, reference in zip(batches, first, strict=True):
            assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(batch, reference, strict=True))


def test_cli_push_flags_reach_the_config(monkeypatch, tmp_path):
    from hf_genssl import cli

    seen = {}
    monkeypatch.setattr("hf_genssl.pretraining.run_pretraining",
                        lambda config, overrides, resume: seen.update(overrides) or {"final_dir": "x"})
    assert cli.main(["pretrain", "--config", "tiny", "--output-dir", str(tmp_path), "--push-to-hub",
                     "--hub-model-id", "you/tiny", "--override", "max_steps=3"]) == 0
    assert seen == {"max_steps": 3, "output_dir": str(tmp_path), "push_to_hub": True, "hub_model_id": "you/tiny"}


def test_cli_push_without_a_hub_repo_fails_before_training(tmp_path, capsys):
    """`genssl pretrain --push-to-hub` without --hub-model-id used to train, then push to a repo named after the
    run folder (`final`'s parent); now it is a one-line error, as `genssl finetune` gives, before any work."""
    from hf_genssl import cli

    run_dir = tmp_path / "run"
    assert cli.main(["pretrain", "--config", "tiny", "--output-dir", str(run_dir), "--push-to-hub"]) == 2
    assert "push_to_hub needs hub_model_id (--hub-model-id user/name)" in capsys.readouterr().err
    assert not run_dir.exists()


def test_only_the_tied_head_save_warning_is_silenced(caplog):
    """Accelerate warns at every checkpoint that the tied ``lm_head.weight`` was dropped (harmless: the resume test
    above is bit-identical); pretraining silences that one message while it saves a checkpoint, and only then: a
    genuinely shared pair still warns, and outside the save the tied head warns as Accelerate made it."""
    from accelerate.state import PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    from hf_genssl.pretraining import _tied_head_save_warning_silenced

    PartialState()
    shared = torch.zeros(3)
    tied = {"model.embed_tokens.weight": shared, "lm_head.weight": shared}
    with caplog.at_level("WARNING", logger="accelerate.utils.other"):
        with _tied_head_save_warning_silenced():
            clean_state_dict_for_safetensors(dict(tied))
            assert not caplog.records
            clean_state_dict_for_safetensors({"a": shared, "b": shared})
        assert len(caplog.records) == 1 and "Removed shared tensor {'b'}" in caplog.records[0].getMessage()
        clean_state_dict_for_safetensors(dict(tied))
    assert len(caplog.records) == 2 and "Removed shared tensor {'lm_head.weight'}" in caplog.records[1].getMessage()


ACCUMULATING = {**TINY, "objective": "semi_ar", "group_size": [1, 2, 3], "dropout": 0.1, "batch_size": 4,
                "gradient_accumulation_steps": 2, "warmup_steps": 3, "max_steps": 8, "log_every": 1,
                "eval_every": 1000, "save_every": 3}


def cosine_with_warmup_by_hand(step: int, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.fixture(scope="module")
def accumulating_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("accumulating") / "straight"
    return run_dir, run_pretraining({**ACCUMULATING, "output_dir": str(run_dir)})


def test_learning_rate_follows_the_schedule_per_optimizer_step_with_accumulation(accumulating_run):
    """With 2 micro-batches per optimizer step, the rate logged after optimizer step N is the schedule at N."""
    _, result = accumulating_run
    logged = [(r["step"], r["lr"]) for r in result["history"] if "lr" in r]
    assert [step for step, _ in logged] == list(range(1, 9))
    for step, lr in logged:
        assert lr == pytest.approx(cosine_with_warmup_by_hand(step, 3e-3, 3, 8), rel=1e-9, abs=1e-12), step


@pytest.mark.slow
def test_resume_after_a_crash_mid_accumulation_is_bit_identical(accumulating_run, tmp_path, monkeypatch):
    """gradient_accumulation_steps=2: a run that dies in the middle of optimizer step 5 (its first micro-batch) and is
    resumed from its step-3 checkpoint ends with exactly the weights of a run that never stopped."""
    from hf_genssl import GenSSLForPreTraining

    forward, calls = GenSSLForPreTraining.forward, []

    def dies_at_the_ninth_micro_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 9:  # micro-batches 1-6 are steps 1-3 (checkpoint-3 saved), 7-8 step 4, 9 opens step 5
            raise KeyboardInterrupt("simulated kill")
        return forward(self, *args, **kwargs)

    crashed = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        patch.setattr(GenSSLForPreTraining, "forward", dies_at_the_ninth_micro_batch)
        with pytest.raises(KeyboardInterrupt, match="simulated kill"):
            run_pretraining({**ACCUMULATING, "output_dir": str(crashed)})
    assert not (crashed / "final").exists()
    result = run_pretraining({**ACCUMULATING, "output_dir": str(crashed)}, resume=True)
    assert result["steps"] == 8
    a, b = weights(accumulating_run[0]), weights(crashed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.slow
def test_push_to_hub_publishes_the_final_checkpoint_with_card_and_code(tmp_path):
    """run_pretraining(push_to_hub=True) against the local fake Hub: the final folder's weights, code files,
    tokenizer and model card are in the repo afterwards, byte for byte."""
    from tests.fake_hub import FAKE_USER, fake_hub, hub_online

    repo_id = f"{FAKE_USER}/genssl-tiny-pushed"
    with fake_hub(tmp_path / "server") as endpoint, hub_online(endpoint):
        result = run_pretraining({**TINY, "max_steps": 2, "eval_every": 2, "output_dir": str(tmp_path / "run"),
                                  "push_to_hub": True, "hub_model_id": repo_id})
        on_hub = endpoint.hub.files(repo_id)
    final = Path(result["final_dir"])
    for name in ("README.md", "config.json", "model.safetensors", "configuration_genssl.py", "modeling_genssl.py",
                 "two_stream_attention.py", "tokenizer.json"):
        assert name in on_hub, name
        assert on_hub[name] == (final / name).read_bytes(), name
    assert "hf_genssl" in on_hub["README.md"].decode() and "semi_autoregressive" in on_hub["README.md"].decode()
