"""The loop's performance knobs (issue 17): each changes how the model computes, never what, and each reaches the
model or the DataLoader (a knob that is read and then ignored fails here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_genssl.pretraining import run_pretraining
from tests.conftest import make_texts

TINY = dict(
    texts=make_texts(300, seed=1), vocab_size=400, seq_len=32, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, batch_size=8, learning_rate=3e-3, warmup_steps=1, max_steps=3, log_every=1,
    eval_every=3, eval_batches=1, save_every=1000, progress=False, objective="semi_ar", group_size=[1, 2, 3],
)


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows for key in ("loss", "val_loss") if key in row]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory) -> Path:
    """The reference: every knob at its default."""
    run_dir = tmp_path_factory.mktemp("knobs") / "reference"
    run_pretraining({**TINY, "output_dir": str(run_dir)})
    return run_dir


def test_gradient_checkpointing_recomputes_each_layer_and_changes_nothing(eager_run, tmp_path, monkeypatch):
    """On: each layer's forward runs again in the backward (once per layer and training micro-batch), and the
    losses and final weights equal those of the run without it."""
    from hf_genssl.models.two_stream_attention import TwoStreamAttention

    # counted inside the block (the block's own forward is transformers' checkpointing wrapper: replacing it would
    # switch checkpointing off)
    calls = {"n": 0}
    forward = TwoStreamAttention.forward

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TwoStreamAttention, "forward", counted)
    run_pretraining({**TINY, "output_dir": str(tmp_path / "off")})
    off = calls["n"]
    calls["n"] = 0
    run_pretraining({**TINY, "gradient_checkpointing": True, "output_dir": str(tmp_path / "on")})
    assert calls["n"] - off == TINY["max_steps"] * TINY["num_hidden_layers"]
    assert losses(tmp_path / "on") == pytest.approx(losses(eager_run), rel=1e-6)
    assert_same_weights(tmp_path / "on", eager_run, atol=1e-6)


def test_attn_implementation_reaches_the_model_config(eager_run, tmp_path, monkeypatch):
    """`attn_implementation: eager` is what the model's attention dispatches on during training (sdpa by
    default), and the two backends train the same model."""
    from hf_genssl.models.modeling_genssl import GenSSLForPreTraining

    seen: set[str] = set()
    forward = GenSSLForPreTraining.forward

    def spied(self, *args, **kwargs):
        seen.add(self.config._attn_implementation)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GenSSLForPreTraining, "forward", spied)
    run_pretraining({**TINY, "attn_implementation": "eager", "output_dir": str(tmp_path / "eager")})
    assert seen == {"eager"}
    seen.clear()
    run_pretraining({**TINY, "max_steps": 1, "output_dir": str(tmp_path / "default")})
    assert seen == {"sdpa"}
    assert losses(tmp_path / "eager") == pytest.approx(losses(eager_run), rel=1e-5)
    assert_same_weights(tmp_path / "eager", eager_run, atol=1e-5)


def test_an_unknown_attn_implementation_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nonsense"):
        run_pretraining({**TINY, "attn_implementation": "nonsense", "output_dir": str(tmp_path / "run")})


def test_compile_compiles_the_training_forward_and_changes_nothing(eager_run, tmp_path, monkeypatch):
    """`compile: true` runs the model through torch.compile (dynamo captures graphs during the run), the losses
    and weights equal the eager run's, and the final checkpoint is an ordinary one (no `_orig_mod.` keys).

    With dynamo's "eager" backend: inductor's code generation took 8 minutes on the loaded 2-core machine; its
    speed is benchmarks/bench_scale.py's business (`--sections compile`)."""
    from torch._dynamo.utils import counters

    import hf_genssl.pretraining as pretraining

    monkeypatch.setattr(pretraining, "_COMPILE_OPTIONS", {"backend": "eager"})
    torch._dynamo.reset()
    counters.clear()
    run_pretraining({**TINY, "compile": True, "output_dir": str(tmp_path / "compiled")})
    assert counters["stats"]["unique_graphs"] > 0
    assert losses(tmp_path / "compiled") == pytest.approx(losses(eager_run), rel=1e-4)
    assert_same_weights(tmp_path / "compiled", eager_run, atol=1e-4)


def test_dataloader_workers_collate_the_batches_an_unworked_run_collates(tmp_path, monkeypatch):
    """`dataloader_num_workers: 2`: batches are collated in two worker processes, and the run (random group sizes,
    over more than one epoch) equals the one collated in the main process: the collator's per-batch seed follows
    the batch number, whichever process makes the batch."""
    import hf_genssl.pretraining as pretraining

    pids = tmp_path / "collated_by"
    collate = pretraining._BatchSeededCollator.__call__

    def recorded(self, examples):
        with pids.open("a") as f:
            f.write(f"{os.getpid()}\n")
        return collate(self, examples)

    monkeypatch.setattr(pretraining._BatchSeededCollator, "__call__", recorded)
    # 40 short texts: a few batches per epoch, so 8 steps cross epochs
    config = {**TINY, "texts": make_texts(40, seed=2), "max_steps": 8, "eval_every": 4, "group_size": "random"}
    run_pretraining({**config, "output_dir": str(tmp_path / "main")})
    assert set(pids.read_text().split()) == {str(os.getpid())}
    pids.unlink()
    run_pretraining({**config, "dataloader_num_workers": 2, "output_dir": str(tmp_path / "workers")})
    workers = set(pids.read_text().split())
    assert len(workers) >= 4 and str(os.getpid()) not in workers  # 2 per epoch: the run crossed an epoch
    assert losses(tmp_path / "workers") == losses(tmp_path / "main")
    assert_same_weights(tmp_path / "workers", tmp_path / "main", atol=0)
