"""Issue 17: the loop honours what the launcher asks (precision), says when it cannot (sharding on CPU), and states
its global batch; "auto" precision is resolved once and resuming on a machine that resolves it otherwise is refused."""

from __future__ import annotations

import logging

import pytest

import hf_genssl.pretraining as pretraining
from hf_genssl.pretraining import load_config, run_pretraining
from tests.test_pretrain import TINY

RUN = {**TINY, "max_steps": 2, "eval_every": 100}


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for variable in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("available, expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_is_bf16_where_the_hardware_has_it(monkeypatch, available, expected):
    monkeypatch.setattr(pretraining, "_bf16_available", lambda: available)
    for name in ("tiny", "small", "paper", "vit_tiny"):  # the shipped configs default to auto
        assert load_config(name).mixed_precision == "auto"
        assert pretraining._resolve_precision(load_config(name)) == expected
    assert pretraining._resolve_precision(load_config("tiny", {"mixed_precision": "no"})) == "no"


def test_the_launchers_precision_wins(tmp_path, monkeypatch, caplog):
    """`accelerate launch --mixed_precision bf16` (ACCELERATE_MIXED_PRECISION) was silently replaced by the config's."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with caplog.at_level(logging.INFO, logger="hf_genssl.pretraining"):
        result = run_pretraining({**RUN, "mixed_precision": "no", "output_dir": str(tmp_path / "run")})
    assert result["mixed_precision"] == "bf16"
    messages = [r.getMessage() for r in caplog.records]
    assert any("launcher's 'bf16' is used, not the config's 'no'" in m for m in messages)
    assert any(m.startswith("precision bf16; global batch = 8 per process x 1 processes x 1 accumulation steps = 8")
               for m in messages)


def test_resuming_auto_precision_on_other_hardware_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "_bf16_available", lambda: False)
    run_pretraining({**RUN, "mixed_precision": "auto", "output_dir": str(tmp_path / "run")})
    monkeypatch.setattr(pretraining, "_bf16_available", lambda: True)
    with pytest.raises(ValueError, match=r"differing keys: mixed_precision \('no' -> 'bf16'\)"):
        run_pretraining({**RUN, "mixed_precision": "auto", "output_dir": str(tmp_path / "run")}, resume=True)


def test_sharding_that_cannot_happen_on_cpu_is_reported(tmp_path, monkeypatch, caplog):
    """FSDP asked through `accelerate launch` on a CPU machine ran silently as plain data parallel."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(pretraining.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="hf_genssl.pretraining"):
        run_pretraining({**RUN, "output_dir": str(tmp_path / "run")})
    assert any("FSDP was requested (ACCELERATE_USE_FSDP) but Accelerate cannot use it on cpu" in r.getMessage()
               for r in caplog.records)


def test_the_loss_is_reduced_across_processes_only_when_logged(tmp_path, monkeypatch):
    """A gather (and a host sync) per micro-batch stalls every process of a multi-node run: the window's loss and
    token count stay on the device until a row is logged (steps 4 and 8 here) or a checkpoint saved (none)."""
    from accelerate import Accelerator

    calls = []
    for name in ("gather", "reduce", "gather_for_metrics"):
        original = getattr(Accelerator, name)
        monkeypatch.setattr(Accelerator, name, lambda self, *a, _name=name, _f=original, **k:
                            calls.append(_name) or _f(self, *a, **k))
    result = run_pretraining({**RUN, "max_steps": 8, "log_every": 4, "eval_every": 1000, "eval_batches": 1,
                              "output_dir": str(tmp_path / "run")})
    assert [r["step"] for r in result["history"]] == [4, 8]
    assert len(calls) == 3, calls  # two logged rows and the final validation loss


def test_example_accelerate_configs_name_the_models_shard_unit():
    """training/accelerate/*.yaml are what `accelerate launch --config_file` reads: known distributed types, and the
    FSDP wrap class is the models' own `_no_split_modules` (a renamed block would silently wrap nothing)."""
    from pathlib import Path

    import yaml

    from hf_genssl import GenSSLForPreTraining, GenSSLViTForPreTraining

    folder = Path(__file__).resolve().parents[1] / "training" / "accelerate"
    fsdp = yaml.safe_load((folder / "fsdp2.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert fsdp["fsdp_config"]["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert [fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]] == GenSSLForPreTraining._no_split_modules
    assert GenSSLViTForPreTraining._no_split_modules == GenSSLForPreTraining._no_split_modules
    zero3 = yaml.safe_load((folder / "zero3.yaml").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["zero3_save_16bit_model"] is True
