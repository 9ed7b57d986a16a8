"""The models inside the ecosystem: remote-code loading, generation, pipelines, Trainer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, pipeline

from hf_genssl import (
    GenSSLForCausalLM,
    GenSSLForMaskedLM,
    GenSSLForPreTraining,
    GenSSLForSequenceClassification,
    GenSSLModel,
)
from tests.conftest import run_isolated, tiny_config


@pytest.mark.slow
def test_trust_remote_code_in_a_process_without_hf_genssl(tmp_path, tokenizer):
    torch.manual_seed(0)
    checkpoint = tmp_path / "ckpt"
    model = GenSSLForPreTraining(tiny_config()).eval()
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for name in ("configuration_genssl.py", "modeling_genssl.py", "two_stream_attention.py"):
        assert (checkpoint / name).exists(), f"{name} missing from the checkpoint"

    ids = torch.tensor([tokenizer("the man said that")["input_ids"]])
    gids = torch.arange(ids.shape[1])[None] // 2
    torch.save({"ids": ids, "gids": gids}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = {
            "pretraining": model(input_ids=ids, group_ids=gids).logits,
            "causal": GenSSLForCausalLM.from_pretrained(checkpoint)(ids).logits,
            "base": GenSSLModel.from_pretrained(checkpoint)(ids).last_hidden_state,
        }

    script = f"""
    import torch
    from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForPreTraining,
                              AutoModelForSequenceClassification, AutoTokenizer)
    path = {str(checkpoint)!r}
    inputs = torch.load({str(tmp_path / "inputs.pt")!r})
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("the man said that")["input_ids"] == inputs["ids"][0].tolist()
    out = {{}}
    with torch.no_grad():
        out["pretraining"] = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True).eval()(
            input_ids=inputs["ids"], group_ids=inputs["gids"]).logits
        out["causal"] = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()(inputs["ids"]).logits
        out["base"] = AutoModel.from_pretrained(path, trust_remote_code=True).eval()(inputs["ids"]).last_hidden_state
        AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True)
        AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True, num_labels=3)
    torch.save(out, {str(tmp_path / "out.pt")!r})
    """
    result = run_isolated(script, cwd=tmp_path, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_in_library_auto_classes_round_trip(tmp_path):
    model = GenSSLForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is GenSSLForCausalLM
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # tied after loading
    assert type(AutoModel.from_pretrained(tmp_path)) is GenSSLModel


def greedy_without_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids


def test_generation_with_cache_equals_without():
    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config()).eval()
    prompt = torch.tensor([[1, 17, 42, 99, 7]])
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_without_cache(model, prompt, 12))


def test_left_padded_batch_generation_equals_single():
    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config()).eval()
    a, b = [1, 17, 42, 99, 7], [1, 23, 8]
    ids = torch.tensor([a, [0, 0] + b])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    single = model.generate(torch.tensor([b]), max_new_tokens=8, do_sample=False)
    assert batch[1, 2:].tolist() == single[0].tolist()


def test_sampling_runs_and_bidirectional_refuses_cache():
    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config()).eval()
    out = model.generate(torch.tensor([[1, 5]]), max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9)
    assert out.shape == (1, 8)
    with pytest.warns(UserWarning, match="expects a checkpoint with content_attention='causal'"):
        masked = GenSSLForCausalLM(tiny_config(content_attention="bidirectional")).eval()
    with pytest.raises(ValueError, match="iterative unmasking"):
        masked(torch.tensor([[1, 5]]), use_cache=True)


def test_text_generation_and_fill_mask_pipelines(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer))
    generator = pipeline("text-generation", model=GenSSLForCausalLM(config).eval(), tokenizer=tokenizer)
    text = generator("the man said", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the man said") and len(text) > len("the man said")

    fill = pipeline("fill-mask", model=GenSSLForMaskedLM(tiny_config(vocab_size=len(tokenizer),
                    content_attention="bidirectional")).eval(), tokenizer=tokenizer)
    predictions = fill("the man <mask> that", top_k=3)
    assert len(predictions) == 3 and all("token_str" in p for p in predictions)


@pytest.mark.parametrize("problem", ["single_label_classification", "regression"])
def test_trainer_fine_tunes_sequence_classification(tmp_path, tokenizer, texts, problem):
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    num_labels = 1 if problem == "regression" else 2
    model = GenSSLForSequenceClassification(tiny_config(vocab_size=len(tokenizer), num_labels=num_labels,
                                                        problem_type=problem))
    labels = [float(len(t) % 3) if problem == "regression" else len(t) % 2 for t in texts[:32]]
    data = Dataset.from_dict({"text": texts[:32], "label": labels}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"]
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, use_cpu=True,
                             report_to=[], save_strategy="no", logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert not torch.equal(before["score.weight"], model.state_dict()["score.weight"])
    logits = trainer.predict(data.select(range(4))).predictions
    assert logits.shape == (4, num_labels)


@pytest.mark.parametrize("attention,pooling", [("causal", "auto"), ("causal", "last"), ("bidirectional", "auto")])
def test_classification_pooling_ignores_padding(attention, pooling):
    torch.manual_seed(0)
    model = GenSSLForSequenceClassification(
        tiny_config(num_labels=3, content_attention=attention, classifier_pooling=pooling)).eval()
    with torch.no_grad():
        alone = model(torch.tensor([[1, 5, 6, 7]])).logits
        right = model(torch.tensor([[1, 5, 6, 7, 0, 0]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]])).logits
        left = model(torch.tensor([[0, 0, 1, 5, 6, 7]]), attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]])).logits
    torch.testing.assert_close(alone, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone, left, atol=1e-5, rtol=1e-4)


def test_query_pooling_is_the_next_token_query_row():
    """'query' pooling reads the query row the causal LM uses to predict the token after the input."""
    torch.manual_seed(0)
    config = tiny_config(num_labels=2)
    classifier = GenSSLForSequenceClassification(config).eval()
    causal = GenSSLForCausalLM(config).eval()
    causal.model.load_state_dict(classifier.model.state_dict())
    ids = torch.tensor([[1, 17, 42, 99, 7]])
    with torch.no_grad():
        pooled = classifier.model(ids, query_group_ids=torch.tensor([[5]]), query_position_ids=torch.tensor([[5]]),
                                  use_cache=False).query_hidden_state[:, 0]
        expected_logits = classifier.score(pooled)
        next_token_hidden = causal.model(ids, query_group_ids=torch.arange(1, 6)[None],
                                         query_position_ids=torch.arange(1, 6)[None],
                                         use_cache=False).query_hidden_state[:, -1]
        torch.testing.assert_close(pooled, next_token_hidden, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(classifier(ids).logits, expected_logits, atol=1e-5, rtol=1e-4)


def test_causal_lm_loss_is_the_shifted_cross_entropy_by_hand():
    """labels= gives the mean NLL of token t+1 under the logits at t, over labels that are not -100 (padding here)."""
    torch.manual_seed(0)
    model = GenSSLForCausalLM(tiny_config(initializer_range=0.3)).eval()
    ids = torch.tensor([[1, 17, 42, 99, 7, 230], [1, 23, 8, 64, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=labels)
        logits = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(out.logits, logits)
    nlls = [-logits[b, t].log_softmax(-1)[labels[b, t + 1]]
            for b in range(2) for t in range(ids.shape[1] - 1) if labels[b, t + 1] != -100]
    assert len(nlls) == 5 + 3
    torch.testing.assert_close(out.loss, torch.stack(nlls).mean(), atol=1e-5, rtol=1e-5)
