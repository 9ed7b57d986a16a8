"""Logging of the pretraining loop and the CLI: Accelerate trackers (`report_to`), quiet checkpoints, one result."""

from __future__ import annotations

import json
import logging

import pytest

from hf_genssl.pretraining import run_pretraining

TINY = {"vocab_size": 300, "seq_len": 32, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "batch_size": 8, "max_steps": 4, "log_every": 1, "eval_every": 2, "save_every": 2, "progress": False}


def test_report_to_tensorboard_logs_what_metrics_jsonl_logs(tmp_path, texts):
    """`report_to: tensorboard` sends every logged record to Accelerate's TensorBoard tracker under output_dir;
    the scalars equal metrics.jsonl's."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_pretraining({**TINY, "texts": texts, "output_dir": str(run), "report_to": "tensorboard"})
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    accumulator = EventAccumulator(str(run / "trackers"))  # Accelerate's TensorBoard tracker: project "trackers"
    accumulator.Reload()
    logged = [(event.step, event.value) for event in accumulator.Scalars("loss")]
    assert logged == [(row["step"], pytest.approx(row["loss"], rel=1e-6)) for row in rows if "loss" in row]
    assert len(logged) == 4
    val = [(event.step, event.value) for event in accumulator.Scalars("val_loss")]
    assert val == [(row["step"], pytest.approx(row["val_loss"], rel=1e-6)) for row in rows if "val_loss" in row]


def test_no_trackers_by_default(tmp_path, texts):
    """Nothing but metrics.jsonl unless asked (a TensorBoard folder used to appear whenever tensorboard was
    installed)."""
    run = tmp_path / "run"
    run_pretraining({**TINY, "max_steps": 1, "eval_every": 1, "texts": texts, "output_dir": str(run)})
    assert not list(run.rglob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="report_to must be a tracker name"):
        run_pretraining({**TINY, "texts": texts, "output_dir": str(tmp_path / "x"), "report_to": 3})


def test_cli_keeps_accelerates_checkpoint_info_lines_quiet(tmp_path, texts, caplog, capsys):
    """`genssl pretrain` printed Accelerate's "Saving current state to ..." INFO lines at every checkpoint; they
    show with -v only. The run's own INFO lines still show."""
    from hf_genssl import cli

    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({**TINY, "texts": texts}))  # JSON is YAML
    caplog.set_level(logging.INFO)
    assert cli.main(["pretrain", "--config", str(config), "--output-dir", str(tmp_path / "quiet")]) == 0
    accelerate_info = [r for r in caplog.records if r.name.startswith("accelerate") and r.levelno == logging.INFO]
    assert not accelerate_info, [r.getMessage() for r in accelerate_info]
    caplog.clear()
    assert cli.main(["-v", "pretrain", "--config", str(config), "--output-dir", str(tmp_path / "verbose")]) == 0
    assert any("Saving current state" in r.getMessage() for r in caplog.records)


def test_the_result_is_printed_by_the_main_process_only(monkeypatch, capsys):
    """Under DDP every process ran the same print: the final JSON appeared once per process."""
    import accelerate

    from hf_genssl import cli

    monkeypatch.setattr("hf_genssl.pretraining.run_pretraining",
                        lambda config, overrides, resume: {"final_dir": "x", "steps": 1, "history": []})
    for main_process, expected in ((False, 0), (True, 1)):
        monkeypatch.setattr(accelerate.PartialState, "is_main_process", property(lambda self, m=main_process: m))
        assert cli.main(["pretrain", "--config", "tiny"]) == 0
        assert capsys.readouterr().out.count('"final_dir"') == expected
