"""Publishing: a fine-tuned GenSSL checkpoint goes to a (local, fake) Hub with the real client and comes back
in a fresh process that cannot import hf_genssl: identical weights, card and code files present."""

from __future__ import annotations

import pytest
import torch

from hf_genssl import GenSSLForSequenceClassification
from hf_genssl.hub import push_checkpoint
from hf_genssl.model_card import write_model_card
from tests.conftest import tiny_config
from tests.fake_hub import FAKE_TOKEN, fake_hub, hub_online, reload_in_fresh_process, state_dict_hash

pytestmark = pytest.mark.slow


def trained_checkpoint(path, tokenizer, texts):
    torch.manual_seed(0)
    model = GenSSLForSequenceClassification(tiny_config(vocab_size=len(tokenizer), num_labels=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = tokenizer(texts[:8], padding=True, return_tensors="pt")
    for _ in range(3):
        model(**batch, labels=torch.tensor([0, 1] * 4)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_model_card(path, "language_model", {"repo_id": "fake-user/genssl-tiny-cls",
                                               "objective": "semi_autoregressive",
                                               "results": {"accuracy": 0.5}, "results_data": "8 generated sentences",
                                               "results_hardware": "CPU, test run"})
    return model


def test_push_and_load_back_in_a_fresh_process(tmp_path, tokenizer, texts):
    checkpoint = tmp_path / "ckpt"
    model = trained_checkpoint(checkpoint, tokenizer, texts)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in checkpoint.iterdir())
    with fake_hub(tmp_path) as endpoint:
        with hub_online(endpoint):
            url = push_checkpoint(checkpoint, "fake-user/genssl-tiny-cls", token=FAKE_TOKEN, endpoint=str(endpoint))
        assert "genssl-tiny-cls" in url
        files = endpoint.hub.files("fake-user/genssl-tiny-cls", "main")
        for name in ("README.md", "config.json", "model.safetensors", "modeling_genssl.py", "configuration_genssl.py",
                     "two_stream_attention.py", "decoding.py", "tokenizer.json"):
            assert name in files, name
        child = reload_in_fresh_process(endpoint, "fake-user/genssl-tiny-cls", "AutoModelForSequenceClassification",
                                        True, hide_packages=["hf_genssl"])
    assert child["hash"] == state_dict_hash(model)
    assert child["module"].startswith("transformers_modules")  # loaded from the pushed code, not from hf_genssl
    assert sorted((p.name, p.stat().st_mtime_ns) for p in checkpoint.iterdir()) == before  # local copy untouched
