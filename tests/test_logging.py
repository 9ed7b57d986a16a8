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


def test_library_runs_keep_accelerates_checkpoint_info_lines_quiet(tmp_path, texts, caplog):
    """A script calling run_pretraining with logging at INFO got Accelerate's "Saving current state to ..." lines
    (six per checkpoint); only the CLI quieted them. Now the loop quiets them around its own save / load only: a
    user's Accelerate INFO lines outside our calls still show, and a level the user set on the `accelerate` logger
    is honoured (that is how they get the lines back)."""
    accelerate_logger = logging.getLogger("accelerate")
    before = accelerate_logger.level  # `genssl` (test_cli...) sets it for the whole process: a library user does not
    accelerate_logger.setLevel(logging.NOTSET)
    caplog.set_level(logging.INFO)
    try:
        run_pretraining({**TINY, "texts": texts, "output_dir": str(tmp_path / "run")})
        run_pretraining({**TINY, "texts": texts, "output_dir": str(tmp_path / "run")}, resume=True)  # load_state
        accelerate_info = [r for r in caplog.records if r.name.startswith("accelerate") and r.levelno == logging.INFO]
        assert not accelerate_info, [r.getMessage() for r in accelerate_info]
        assert any("resumed from" in r.getMessage() for r in caplog.records)  # our own INFO lines still show

        assert accelerate_logger.level == logging.NOTSET  # left as it was
        logging.getLogger("accelerate.accelerator").info("a user's own line")
        assert caplog.records[-1].getMessage() == "a user's own line"

        caplog.clear()
        accelerate_logger.setLevel(logging.INFO)
        run_pretraining({**TINY, "texts": texts, "output_dir": str(tmp_path / "asked")})
        assert any("Saving current state" in r.getMessage() for r in caplog.records)
    finally:
        accelerate_logger.setLevel(before)


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
