"""Issue 13: resume never loses work. Faults are injected here (a kill through a monkeypatched rename or save, bytes
flipped, files truncated or deleted) into copies of one uninterrupted tiny run, and the resumed run must end with
its exact weights and its exact log."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import hf_genssl.pretraining as pretraining
from hf_genssl import cli
from hf_genssl.pretraining import CheckpointError, run_pretraining
from tests.test_pretrain import TINY, history, weights

# log_every (3) does not divide save_every (4): a resumed run must still log the windows of an uninterrupted one
CONFIG = {**TINY, "objective": "semi_ar", "group_size": [1, 2, 3], "dropout": 0.1, "max_steps": 8, "save_every": 4,
          "log_every": 3, "eval_every": 4, "keep_checkpoints": 2}


class Killed(BaseException):
    """Stands for kill -9: not an Exception, so no handler in the code under test can swallow it."""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    run_pretraining({**CONFIG, "output_dir": str(run_dir)})
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    return run_dir


def copy_run(straight: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir)
    return run_dir


def log_rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in history(run_dir)]  # all but timing


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert log_rows(a) == log_rows(b)


def resume(run_dir: Path, caplog, **overrides) -> None:
    with caplog.at_level(logging.INFO, logger="hf_genssl.pretraining"):
        run_pretraining({**CONFIG, **overrides, "output_dir": str(run_dir)}, resume=True)


def resumed_from(caplog) -> str | None:
    found = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    return Path(found[-1].split()[2]).name if found else None


def kill_as_step_8_is_saved(run_dir: Path) -> None:
    """The state a kill -9 leaves after step 8's log rows were written and before its checkpoint was complete."""
    shutil.rmtree(run_dir / "final")
    shutil.rmtree(run_dir / "checkpoint-8")


@pytest.mark.parametrize("pointer", ["missing", "dangling"])
def test_resume_scans_for_the_newest_checkpoint(straight, tmp_path, caplog, pointer):
    run_dir = copy_run(straight, tmp_path)
    kill_as_step_8_is_saved(run_dir)
    if pointer == "missing":
        (run_dir / "latest").unlink()  # else it still names checkpoint-8, which is gone
    resume(run_dir, caplog)
    assert resumed_from(caplog) == "checkpoint-4"
    assert_same_run(straight, run_dir)  # same weights, and metrics.jsonl without duplicate or shifted rows


def test_resumed_log_equals_an_uninterrupted_one(straight, tmp_path, caplog):
    """Rows after the checkpoint are dropped before they are logged again, and the window open at the checkpoint
    (step 3's row was logged, step 4 was not) continues: step 6's row averages steps 4-6, as uninterrupted."""
    run_dir = copy_run(straight, tmp_path)
    kill_as_step_8_is_saved(run_dir)
    (run_dir / "latest").write_text("checkpoint-4")
    resume(run_dir, caplog)
    assert [r["step"] for r in history(run_dir)] == [3, 4, 6, 8]
    assert log_rows(run_dir) == log_rows(straight)


def test_a_kill_while_a_finished_run_resaves_loses_nothing(straight, tmp_path, caplog, monkeypatch):
    """`genssl demo` / `reproduce` resume finished runs. A kill while one replaced its last checkpoint once left no
    checkpoint-8 and a dangling pointer, and the next resume started over, rewriting every checkpoint."""
    run_dir = copy_run(straight, tmp_path)
    shutil.rmtree(run_dir / "final")
    kept = (run_dir / "checkpoint-4" / "model.safetensors").stat()
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "checkpoint-8":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(pretraining.os, "replace", replace)
    try:
        resume(run_dir, caplog)
    except Killed:
        pass
    monkeypatch.setattr(pretraining.os, "replace", real_replace)
    resume(run_dir, caplog)
    assert resumed_from(caplog) == "checkpoint-8"
    assert_same_run(straight, run_dir)
    after = (run_dir / "checkpoint-4" / "model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # never rewritten


def test_a_kill_while_a_checkpoint_is_published_keeps_the_previous_one(tmp_path, straight, caplog, monkeypatch):
    run_dir = tmp_path / "run"
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "checkpoint-8":
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(pretraining.os, "replace", replace)
    with pytest.raises(Killed):
        run_pretraining({**CONFIG, "output_dir": str(run_dir)})
    monkeypatch.setattr(pretraining.os, "replace", real_replace)
    resume(run_dir, caplog)
    assert resumed_from(caplog) == "checkpoint-4"
    assert_same_run(straight, run_dir)


def _flip_a_weight_byte(run_dir: Path) -> None:
    path = run_dir / "checkpoint-8" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # in the last tensor's bytes, not the header
    path.write_bytes(bytes(data))


def _truncate_the_optimizer(run_dir: Path) -> None:
    path = run_dir / "checkpoint-8" / "optimizer.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("corrupt", [_flip_a_weight_byte, _truncate_the_optimizer])
def test_a_corrupt_checkpoint_falls_back_to_the_previous_intact_one(straight, tmp_path, caplog, corrupt):
    run_dir = copy_run(straight, tmp_path)
    shutil.rmtree(run_dir / "final")  # as if killed after the last checkpoint
    corrupt(run_dir)
    with caplog.at_level(logging.WARNING, logger="hf_genssl.pretraining"):
        resume(run_dir, caplog)
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                   and "falling back" in r.getMessage())
    assert "falling back to checkpoint-4" in warning and "checkpoint-8" in warning and "sha256" in warning
    assert resumed_from(caplog) == "checkpoint-4"
    assert_same_run(straight, run_dir)
    assert (run_dir / "checkpoint-8.unusable").is_dir()  # kept for inspection, out of the way


def test_refuses_to_start_over_in_a_folder_that_holds_checkpoints(straight, tmp_path, capsys):
    run_dir = copy_run(straight, tmp_path)
    (run_dir / "latest").unlink()
    shutil.rmtree(run_dir / "final")
    with pytest.raises(CheckpointError, match="already holds a run"):
        run_pretraining({**CONFIG, "output_dir": str(run_dir)})

    for step in (4, 8):  # no intact checkpoint left: --resume must not quietly start from step 0
        _truncate = run_dir / f"checkpoint-{step}" / "model.safetensors"
        _truncate.write_bytes(_truncate.read_bytes()[:100])
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(run_dir)}))
    assert cli.main(["pretrain", "--config", str(config), "--resume"]) != 0
    error = capsys.readouterr().err
    assert "none is intact" in error and "checkpoint-8" in error and "checkpoint-4" in error
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before  # nothing touched


def test_final_is_written_atomically(straight, tmp_path, caplog, monkeypatch):
    """`genssl reproduce` treats final/model.safetensors as "done": a kill while final/ is written must not leave it."""
    run_dir = tmp_path / "run"

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(pretraining, "_write_card", killed)  # the last file of final/ to be written
    with pytest.raises(Killed):
        run_pretraining({**CONFIG, "output_dir": str(run_dir)})
    assert not (run_dir / "final").exists()
    monkeypatch.undo()
    resume(run_dir, caplog)
    assert_same_run(straight, run_dir)
    assert (run_dir / "final" / "README.md").is_file() and not (run_dir / "final.tmp").exists()


def test_pretraining_push_failure_exits_non_zero_naming_the_local_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "max_steps": 2, "output_dir": str(run_dir)}))
    # HF_HUB_OFFLINE=1 (conftest): the push fails for real, in huggingface_hub
    assert cli.main(["pretrain", "--config", str(config), "--push-to-hub", "--hub-model-id", "you/tiny"]) == 2
    error = capsys.readouterr().err
    assert "you/tiny" in error and str(run_dir / "final") in error
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_finetuning_push_failure_exits_non_zero_naming_the_local_checkpoint(straight, tmp_path, capsys):
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"the of and {i},{i % 2}\n" for i in range(24)))
    out = tmp_path / "ft"
    assert cli.main(["finetune", "--model", str(straight / "final"), "--task", str(train), "--output-dir", str(out),
                     "--epochs", "1", "--batch-size", "8", "--push-to-hub", "--hub-model-id", "you/ft"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "you/ft" in error and str(out / "final") in error
    assert json.loads((out / "results.json").read_text())["hub_error"]
