"""Pretraining on your own data: local files, existing tokenizers, cached preprocessing, streaming, checkpoints."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_genssl.data import pretraining_data
from hf_genssl.data.pretraining_data import (
    blocks_of,
    group_into_blocks,
    load_text_sources,
    split_stream_by_node,
)
from hf_genssl.pretraining import load_config, run_pretraining
from tests.conftest import make_texts

REPO = Path(__file__).resolve().parents[1]
TEXTS = make_texts(120, seed=5)
TINY = dict(
    vocab_size=400, seq_len=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, batch_size=8,
    learning_rate=3e-3, warmup_steps=2, log_every=1, eval_every=1000, eval_batches=2, save_every=1000, progress=False,
)


def write(path: Path, texts: list[str], column: str = "text") -> Path:
    """``texts`` as a file of the format its suffix names (one document per line / record / row)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".txt":
        path.write_text("\n".join(texts) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({column: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    elif path.suffix == ".csv":
        pd.DataFrame({"id": range(len(texts)), column: texts}).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame({"id": range(len(texts)), column: texts}).to_parquet(path)
    return path


def held_out(text: str, percentage: float = 5.0) -> bool:
    """The documented validation rule, computed here: crc32 of the text, modulo 10,000, below percentage * 100."""
    return zlib.crc32(text.encode()) % 10_000 < percentage * 100


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def cfg_for(tmp_path, **values):
    return load_config({**TINY, "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"), **values})


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv", ".parquet"])
def test_local_files_of_each_format_give_the_documents_blocks_and_pretrain(tmp_path, suffix):
    files = [write(tmp_path / f"part{i}{suffix}", TEXTS[i * 60 : (i + 1) * 60]) for i in range(2)]
    cfg = cfg_for(tmp_path, train_files=str(tmp_path / f"part*{suffix}"))
    train, validation, _ = load_text_sources(cfg)
    # every document exactly once, held out by the hash rule (independent of file order)
    assert sorted(train["text"]) == sorted(t for t in TEXTS if not held_out(t))
    assert sorted(validation["text"]) == sorted(t for t in TEXTS if held_out(t))

    result = run_pretraining({**TINY, "train_files": [str(f) for f in files], "max_steps": 2, "eval_every": 2,
                              "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run")})
    assert result["steps"] == 2 and result["final_val_loss"] == pytest.approx(result["final_val_loss"])  # not NaN
    # the blocks it trained on: the documents in file order, each followed by EOS, cut every seq_len - 1 tokens
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    blocks = blocks_of(train, tokenizer, cfg, "train")
    expected = [i for t in TEXTS if not held_out(t) for i in [*tokenizer(t, add_special_tokens=False)["input_ids"],
                                                               tokenizer.eos_token_id]]
    assert [i for block in blocks["input_ids"] for i in block] == expected
    assert {len(b) for b in blocks["input_ids"][:-1]} == {31} and 0 < len(blocks["input_ids"][-1]) <= 31


def test_group_into_blocks_keeps_every_token():
    assert group_into_blocks([[5, 6, 7], [8], [9, 10]], 2, 3) == [[5, 6, 7], [2, 8, 2], [9, 10, 2]]
    assert group_into_blocks([[5, 6, 7, 8]], 2, 3) == [[5, 6, 7], [8, 2]]


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    good = write(tmp_path / "good.jsonl", TEXTS[:50])
    wrong = write(tmp_path / "wrong.jsonl", TEXTS[:50], column="content")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    cases = [
        (dict(train_files=[str(good), str(wrong)]), rf"{wrong} has no column 'text' \(columns: \['content', 'id'\]\)"),
        (dict(train_files=[str(good)], validation_files=[str(wrong)]), rf"{wrong} has no column 'text'"),
        (dict(train_files=[str(empty)]), rf"{empty} is empty"),
        (dict(train_files=[str(tmp_path / "nothing*.txt")]), r"no file matches .*nothing\*\.txt"),
        (dict(train_files=[str(good)], text_column="body"), rf"{good} has no column 'body'"),
        (dict(dataset_name="someone/missing"), r"Cannot load dataset 'someone/missing' .*train_files=.*corpus="),
    ]
    for values, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            load_text_sources(cfg_for(tmp_path, **values))
        assert "\n" not in str(error.value), str(error.value)
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,text\n")
    with pytest.raises(ValueError, match=rf"{header_only} holds no documents"):
        load_text_sources(cfg_for(tmp_path, train_files=str(header_only)))


def _tokenizer_without_mask_or_pad(path: Path) -> Path:
    """A GPT-2-style tokenizer: BPE whose only special token is <|endoftext|> (no mask, no pad)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=350, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(path)
    return path


@pytest.mark.slow
def test_existing_tokenizer_without_mask_token_gets_one_and_a_masked_objective_trains(tmp_path, caplog):
    from transformers import AutoTokenizer

    path = _tokenizer_without_mask_or_pad(tmp_path / "gpt2ish")
    before = AutoTokenizer.from_pretrained(path)
    assert before.mask_token is None and before.pad_token is None
    with caplog.at_level("WARNING", logger="hf_genssl.data.pretraining_data"):
        result = run_pretraining({**TINY, "texts": TEXTS, "tokenizer_name_or_path": str(path),
                                  "objective": "variable_masked", "mask_ratio_range": [0.1, 0.5], "max_steps": 12,
                                  "log_every": 3, "output_dir": str(tmp_path / "run")})
    added = [r for r in caplog.records if "lacked special tokens" in r.getMessage()]
    assert len(added) == 1 and "mask_token" in added[0].getMessage() and "pad_token" in added[0].getMessage()
    after = AutoTokenizer.from_pretrained(result["final_dir"])
    assert after.mask_token == "<mask>" and after.pad_token == "<pad>" and len(after) == len(before) + 2
    assert after.bos_token == after.eos_token == "<|endoftext|>"
    embeddings = load_file(str(Path(result["final_dir"]) / "model.safetensors"))["model.embed_tokens.weight"]
    assert embeddings.shape[0] == len(after)
    losses = [r["loss"] for r in result["history"] if "loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses


@pytest.mark.slow
def test_second_run_reuses_tokenizer_and_preprocessing_caches(tmp_path, monkeypatch):
    calls = {"tokenize": 0, "train_bpe": 0}
    tokenize = pretraining_data.TokenizeAndGroup.__call__
    monkeypatch.setattr(pretraining_data.TokenizeAndGroup, "__call__",
                        lambda self, batch: calls.__setitem__("tokenize", calls["tokenize"] + 1)
                        or tokenize(self, batch))
    import hf_genssl.tokenization as tokenization

    train_bpe = tokenization.train_tokenizer
    monkeypatch.setattr(tokenization, "train_tokenizer",
                        lambda *a, **k: calls.__setitem__("train_bpe", calls["train_bpe"] + 1) or train_bpe(*a, **k))
    files = write(tmp_path / "corpus.jsonl", TEXTS)
    config = {**TINY, "train_files": str(files), "max_steps": 1, "cache_dir": str(tmp_path / "cache")}
    run_pretraining({**config, "output_dir": str(tmp_path / "first")})
    assert calls["tokenize"] > 0 and calls["train_bpe"] == 1
    calls.update(tokenize=0, train_bpe=0)
    run_pretraining({**config, "output_dir": str(tmp_path / "second")})
    assert calls == {"tokenize": 0, "train_bpe": 0}
    # other data (one document more) is preprocessed again, with a new tokenizer
    write(tmp_path / "corpus.jsonl", [*TEXTS, "One more document."])
    run_pretraining({**config, "output_dir": str(tmp_path / "third")})
    assert calls["tokenize"] > 0 and calls["train_bpe"] == 1


def _documents_of(blocks, tokenizer) -> list[str]:
    """A process's blocks back into its documents: concatenate in order, split at EOS, decode."""
    ids = [i for block in blocks for i in block["input_ids"]]
    documents, current = [], []
    for i in ids:
        if i == tokenizer.eos_token_id:
            documents.append(tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    assert not current  # every document ends with its EOS
    return documents


@pytest.mark.parametrize("n_files", [1, 4])
def test_streams_split_by_node_are_disjoint_and_cover_the_corpus(tmp_path, n_files, tokenizer):
    lines = [f"line {i:04d}" for i in range(203)]
    for k in range(n_files):
        write(tmp_path / f"lines{k}.txt", lines[k::n_files])
    cfg = cfg_for(tmp_path, train_files=str(tmp_path / f"lines{'*' if n_files > 1 else '0'}.txt"), streaming=True,
                  validation_split_percentage=1)
    train, validation, _ = load_text_sources(cfg, streaming=True)
    seen = [list(blocks_of(split_stream_by_node(train, rank, 2), tokenizer, cfg, "train")) for rank in range(2)]
    blocks = [[tuple(b["input_ids"]) for b in rank] for rank in seen]
    assert blocks[0] and blocks[1] and not set(blocks[0]) & set(blocks[1])
    if n_files == 4:  # whole files (shards) per process: each packs its own documents
        documents = _documents_of(seen[0], tokenizer) + _documents_of(seen[1], tokenizer)
    else:  # one shard: each process keeps every other block of the whole stream
        assert len(seen[0]) - len(seen[1]) in (0, 1)
        documents = _documents_of([b for pair in itertools.zip_longest(*seen) for b in pair if b], tokenizer)
    held = {line for line in lines if held_out(line, 1)}
    assert held and set(_documents_of(list(blocks_of(validation, tokenizer, cfg, "v")), tokenizer)) == held
    assert sorted(documents) == sorted(set(lines) - held)


@pytest.mark.slow
def test_streaming_resume_after_kill_is_bit_identical(tmp_path):
    files = write(tmp_path / "corpus.txt", TEXTS[:40])  # ~5 batches per pass: the run crosses a pass of the stream
    config = {**TINY, "train_files": str(files), "streaming": True, "objective": "semi_ar", "group_size": [1, 2, 3],
              "dropout": 0.1, "max_steps": 8, "cache_dir": str(tmp_path / "cache")}
    straight = run_pretraining({**config, "output_dir": str(tmp_path / "straight")})

    interrupted = tmp_path / "interrupted"
    run_pretraining({**config, "output_dir": str(interrupted), "save_every": 3})
    shutil.rmtree(interrupted / "final")
    shutil.rmtree(interrupted / "checkpoint-8")
    (interrupted / "latest").write_text("checkpoint-6")
    (interrupted / "metrics.jsonl").unlink()
    resumed = run_pretraining({**config, "output_dir": str(interrupted), "save_every": 3}, resume=True)

    a, b = load_file(str(Path(straight["final_dir"]) / "model.safetensors")), load_file(
        str(Path(resumed["final_dir"]) / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"] if r["step"] > 6]


@pytest.mark.slow
def test_continued_pretraining_under_another_objective_starts_from_the_checkpoint(tmp_path):
    from hf_genssl import DataCollatorForVariableLengthMasking, GenSSLForPreTraining

    base = {**TINY, "texts": TEXTS, "eval_every": 4}
    ar = run_pretraining({**base, "objective": "ar", "max_steps": 4, "output_dir": str(tmp_path / "ar")})
    # the same objective: step 0 of the continued run is the checkpoint's own last validation loss
    again = run_pretraining({**base, "objective": "ar", "max_steps": 1, "model_name_or_path": ar["final_dir"],
                             "output_dir": str(tmp_path / "again")})
    assert again["history"][0] == {"step": 0, "val_loss": ar["final_val_loss"]}

    # another objective (masked, bidirectional): step 0 equals the checkpoint's weights evaluated here
    masked = run_pretraining({**base, "objective": "masked", "max_steps": 1, "model_name_or_path": ar["final_dir"],
                              "output_dir": str(tmp_path / "masked")})
    assert history(tmp_path / "masked")[0]["step"] == 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ar["final_dir"])
    cut = max(1, len(TEXTS) // 20)
    blocks = group_into_blocks(tokenizer(TEXTS[:cut], add_special_tokens=False)["input_ids"],
                               tokenizer.eos_token_id, 31)[: 2 * 8]

    def loss_of(model) -> float:
        collator = DataCollatorForVariableLengthMasking(tokenizer=tokenizer, mask_ratio_range=(0.15, 0.15), seed=1234)
        with torch.no_grad():
            return torch.stack([model.eval()(**collator(blocks[i : i + 8]), only_target_logits=True).loss
                                for i in range(0, len(blocks), 8)]).mean().item()

    checkpoint = GenSSLForPreTraining.from_pretrained(ar["final_dir"], content_attention="bidirectional")
    fresh = GenSSLForPreTraining(checkpoint.config)
    assert masked["history"][0]["val_loss"] == pytest.approx(loss_of(checkpoint), rel=1e-5)
    assert masked["history"][0]["val_loss"] != pytest.approx(loss_of(fresh), rel=1e-2)


def test_a_folder_saved_with_save_to_disk_works_as_dataset_name(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"body": TEXTS[:100]}),
                 "validation": Dataset.from_dict({"body": TEXTS[100:]})}).save_to_disk(tmp_path / "saved")
    train, validation, name = load_text_sources(cfg_for(tmp_path, dataset_name=str(tmp_path / "saved"),
                                                        text_column="body"))
    assert list(train["body"]) == TEXTS[:100] and list(validation["body"]) == TEXTS[100:]


# Runs under `accelerate launch`: every process records the blocks its loader hands the collator, with the pass
# over its share of the stream they belong to (StreamingBatches.epoch), then writes them to seen-<rank>.json.
_RECORDING_LAUNCH = r"""
import json, sys
from pathlib import Path
from hf_genssl.data import pretraining_data
from hf_genssl.pretraining import run_pretraining

seen = []
init = pretraining_data.StreamingBatches.__init__

def recording_init(self, blocks, batch_size, collate_fn, accelerator):
    def collate(examples):
        seen.append([self.epoch, [list(example["input_ids"]) for example in examples]])
        return collate_fn(examples)
    init(self, blocks, batch_size, collate, accelerator)

pretraining_data.StreamingBatches.__init__ = recording_init
config = json.loads(sys.argv[1])
result = run_pretraining(config)
from accelerate import PartialState
state = PartialState()
Path(config["output_dir"], f"seen-{state.process_index}.json").write_text(json.dumps(
    {"world": state.num_processes, "steps": result["steps"], "batches": seen}))
state.destroy_process_group()  # as `genssl pretrain` does at its end
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_streaming_run_gives_each_rank_disjoint_blocks_that_cover_the_corpus(tmp_path):
    """A real `accelerate launch` of 2 CPU processes (gloo) streaming one file of numbered lines: in their first pass,
    the two ranks' training blocks are disjoint and, interleaved (one file = one shard: each rank keeps every other
    block of the packed stream), decode to exactly the training lines in file order; with the validation lines
    (held out by the hash rule) that is the whole corpus."""
    from transformers import AutoTokenizer

    lines = [f"line {i:03d}" for i in range(150)]
    corpus = write(tmp_path / "numbered.txt", lines)
    run = tmp_path / "run"
    # batch_size 1: drop_last drops no block; 40 steps is more than a rank's share (~17 blocks), so both start a
    # second pass and their first one is complete
    config = {**TINY, "train_files": str(corpus), "streaming": True, "objective": "ar", "batch_size": 1,
              "max_steps": 40, "log_every": 40, "eval_batches": 1, "cache_dir": str(tmp_path / "cache"),
              "output_dir": str(run)}
    script = tmp_path / "launch.py"
    script.write_text(_RECORDING_LAUNCH)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", str(_free_port()), str(script), json.dumps(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _, stderr = launch.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # torchrun starts each rank in its own session: kill them by the process tree
        import psutil

        for process in [*psutil.Process(launch.pid).children(recursive=True), psutil.Process(launch.pid)]:
            process.kill()
        pytest.fail(f"the 2-process run did not end in 300 s (a rank waiting in a collective?):\n"
                    f"{launch.communicate()[1][-3000:]}")
    assert launch.returncode == 0, stderr[-4000:]

    ranks = [json.loads((run / f"seen-{rank}.json").read_text()) for rank in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [40, 40]
    first_pass = [[block for epoch, batch in r["batches"] if epoch == 0 for block in batch] for r in ranks]
    assert all(any(epoch == 1 for epoch, _ in r["batches"]) for r in ranks)  # the first pass ended
    assert first_pass[0] and first_pass[1] and abs(len(first_pass[0]) - len(first_pass[1])) <= 1
    assert not {tuple(b) for b in first_pass[0]} & {tuple(b) for b in first_pass[1]}
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    interleaved = [b for pair in itertools.zip_longest(*first_pass) for b in pair if b is not None]
    train_lines = _documents_of([{"input_ids": b} for b in interleaved], tokenizer)
    held = [line for line in lines if held_out(line)]
    assert held and train_lines == [line for line in lines if not held_out(line)]
    assert sorted(train_lines + held) == lines


@pytest.mark.slow
def test_continuing_a_vit_checkpoint_starts_from_its_weights(tmp_path):
    """`model_name_or_path` with a ViT objective: under the same objective, step 0 of the continued run is the
    checkpoint's own last validation loss; under another one (semi-AR -> variable masking, causal -> bidirectional),
    it is the checkpoint's weights evaluated here on the same validation images with the same collator seed."""
    from hf_genssl.image_collators import DataCollatorForVariableLengthImageMasking
    from hf_genssl.models.modeling_genssl_vit import GenSSLViTForPreTraining

    cache = os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache")
    base = {"image_dataset": "mnist_5k", "max_images": 64, "hidden_size": 32, "num_hidden_layers": 2, "batch_size": 16,
            "eval_every": 4, "eval_batches": 2, "log_every": 4, "save_every": 1000, "progress": False,
            "mixed_precision": "no", "mask_ratio_range": [0.25, 0.75], "cache_dir": cache}
    semi_ar = run_pretraining("vit_tiny", {**base, "objective": "vit_semi_ar", "max_steps": 4,
                                           "output_dir": str(tmp_path / "semi_ar")})
    again = run_pretraining("vit_tiny", {**base, "objective": "vit_semi_ar", "max_steps": 1,
                                         "model_name_or_path": semi_ar["final_dir"],
                                         "output_dir": str(tmp_path / "again")})
    assert again["history"][0] == {"step": 0, "val_loss": semi_ar["final_val_loss"]}

    masked = run_pretraining("vit_tiny", {**base, "objective": "vit_variable_masked", "max_steps": 1,
                                          "model_name_or_path": semi_ar["final_dir"],
                                          "output_dir": str(tmp_path / "masked")})
    assert masked["history"][0]["step"] == 0
    from hf_genssl.data.images import image_arrays

    images = torch.from_numpy(image_arrays("mnist_5k", cache)["test"][0][:32].copy()).float().div(255.0)[:, None]

    def loss_of(model) -> float:
        collator = DataCollatorForVariableLengthImageMasking(patch_size=4, mask_ratio_range=(0.25, 0.75), seed=1234)
        with torch.no_grad():
            return torch.stack([model.eval()(**collator([{"pixel_values": p} for p in images[i : i + 16]]),
                                             only_target_logits=True).loss for i in (0, 16)]).mean().item()

    checkpoint = GenSSLViTForPreTraining.from_pretrained(semi_ar["final_dir"], content_attention="bidirectional")
    assert checkpoint.config.content_attention == "bidirectional"
    fresh = GenSSLViTForPreTraining(checkpoint.config)
    assert masked["history"][0]["val_loss"] == pytest.approx(loss_of(checkpoint), rel=1e-5)
    assert masked["history"][0]["val_loss"] != pytest.approx(loss_of(fresh), rel=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_a_hub_dataset_is_asked_for_by_name_config_revision_and_mode_and_its_splits_are_pretrained_on(
        tmp_path, monkeypatch, streaming):
    """`dataset_name` against the Hub, mocked at the `datasets.load_dataset` boundary (the Hub is unreachable here and
    tests/fake_hub.py serves model repos only): the call carries the name, config, revision, mode and our cache, every
    split is asked for (no `split=`), and the run tokenizes exactly the Hub documents: `train` for training, the
    dataset's own `validation` split (no hold-out) for evaluation."""
    import datasets

    hub_train = [f"Hub training document {i}: {text}" for i, text in enumerate(TEXTS[:100])]
    hub_validation = [f"Hub validation document {i}: {text}" for i, text in enumerate(TEXTS[100:])]
    calls = []

    def load_dataset(path, name=None, **kwargs):
        calls.append({"path": path, "name": name, **kwargs})
        splits = datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({"id": list(range(100)), "body": hub_train}),
            "validation": datasets.Dataset.from_dict({"id": list(range(20)), "body": hub_validation})})
        if kwargs.get("streaming"):
            return datasets.IterableDatasetDict({k: v.to_iterable_dataset(num_shards=2) for k, v in splits.items()})
        return splits

    real_load_dataset = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    tokenized: list[str] = []
    tokenize = pretraining_data.TokenizeAndGroup.__call__
    monkeypatch.setattr(pretraining_data.TokenizeAndGroup, "__call__",
                        lambda self, batch: tokenized.extend(batch["body"]) or tokenize(self, batch))

    result = run_pretraining({**TINY, "dataset_name": "someone/corpus", "dataset_config_name": "en",
                              "dataset_revision": "0123abcd", "text_column": "body", "streaming": streaming,
                              "max_steps": 2, "eval_every": 2, "cache_dir": str(tmp_path / "cache"),
                              "output_dir": str(tmp_path / "run")})
    assert calls == [{"path": "someone/corpus", "name": "en", "revision": "0123abcd", "streaming": streaming,
                      "cache_dir": str(tmp_path / "cache" / "hf_datasets")}]
    # each one a parameter the real load_dataset names (an unknown keyword would fall into its **config_kwargs)
    import inspect

    named = {p.name for p in inspect.signature(real_load_dataset).parameters.values() if p.kind is not p.VAR_KEYWORD}
    assert set(calls[0]) <= named, set(calls[0]) - named
    assert result["data"] == "someone/corpus/en@0123abcd" and result["steps"] == 2
    assert result["final_val_loss"] == pytest.approx(result["final_val_loss"])  # evaluated, not NaN
    # tokenized: all of train (a stream: its first 1000-document batch) and all of validation, nothing else
    assert sorted(tokenized) == sorted(hub_train + hub_validation)


def test_the_hub_revision_is_part_of_the_tokenizer_cache_key_and_needs_a_hub_dataset(tmp_path):
    pinned = cfg_for(tmp_path, dataset_name="someone/corpus", dataset_revision="0123abcd")
    other = cfg_for(tmp_path, dataset_name="someone/corpus", dataset_revision="4567ef01")
    assert pretraining_data._tokenizer_key(pinned) != pretraining_data._tokenizer_key(other)
    with pytest.raises(ValueError, match="dataset_revision needs dataset_name"):
        load_text_sources(cfg_for(tmp_path, dataset_revision="0123abcd"))
    from datasets import Dataset

    Dataset.from_dict({"text": TEXTS}).save_to_disk(tmp_path / "saved")
    with pytest.raises(ValueError, match="dataset_revision is for Hub datasets; .*saved is a folder"):
        load_text_sources(cfg_for(tmp_path, dataset_name=str(tmp_path / "saved"), dataset_revision="0123abcd"))


def test_continuing_a_vit_checkpoint_with_other_patches_is_a_one_line_error(tmp_path):
    """The collators cut patches by the run's config, the model by its own: a mismatch used to fail at the first
    step with a shape error about group_ids."""
    from hf_genssl.models.configuration_genssl_vit import GenSSLViTConfig
    from hf_genssl.models.modeling_genssl_vit import GenSSLViTForPreTraining

    GenSSLViTForPreTraining(GenSSLViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=32,
                                            num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
                            ).save_pretrained(tmp_path / "checkpoint")
    with pytest.raises(ValueError, match=r"other patches: this run has patch_size 7 \(checkpoint: 4\); set them") as e:
        run_pretraining("vit_tiny", {"image_dataset": "mnist_5k", "max_images": 64, "max_steps": 1, "progress": False,
                                     "patch_size": 7, "model_name_or_path": str(tmp_path / "checkpoint"),
                                     "cache_dir": os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache"),
                                     "output_dir": str(tmp_path / "run")})
    assert "\n" not in str(e.value)


def test_continuing_a_vit_checkpoint_takes_the_runs_pixel_target_and_says_so(tmp_path, caplog):
    """`norm_pix_loss` is what the loss regresses, the run's choice like its objective: the checkpoint's value used
    to win silently."""
    from hf_genssl.models.configuration_genssl_vit import GenSSLViTConfig
    from hf_genssl.models.modeling_genssl_vit import GenSSLViTForPreTraining

    GenSSLViTForPreTraining(GenSSLViTConfig(image_size=28, patch_size=4, num_channels=1, hidden_size=32,
                                            num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                            norm_pix_loss=True)).save_pretrained(tmp_path / "checkpoint")
    with caplog.at_level(logging.WARNING, logger="hf_genssl.pretraining"):
        result = run_pretraining("vit_tiny", {"image_dataset": "mnist_5k", "max_images": 64, "max_steps": 1,
                                              "progress": False, "objective": "vit_variable_masked",
                                              "mask_ratio_range": [0.25, 0.75], "mixed_precision": "no",
                                              "model_name_or_path": str(tmp_path / "checkpoint"),
                                              "cache_dir": os.environ.get("GENSSL_CACHE") or str(tmp_path / "cache"),
                                              "output_dir": str(tmp_path / "run")})
    assert GenSSLViTConfig.from_pretrained(result["final_dir"]).norm_pix_loss is False
    assert "norm_pix_loss: this run's False replaces the checkpoint's True" in caplog.text
