"""The models behave like transformers models where users touch them: Trainer's loss scaling, cache names, use_cache,
the head matching the checkpoint, PEFT defaults, attention outputs, and clear errors for bad inputs."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_genssl import GenSSLForCausalLM, GenSSLForMaskedLM, GenSSLForPreTraining

from .conftest import tiny_config


def _examples(n: int = 4, length: int = 12) -> list[dict]:
    """Fixed-length rows whose number of targets differs a lot, so averaging per token vs per batch differs."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        input_ids = torch.randint(5, 500, (length,), generator=generator)
        labels = input_ids.clone()
        labels[: 2 + 3 * i] = -100
        rows.append({"input_ids": input_ids, "labels": labels, "group_ids": torch.arange(length)})
    return rows


class _KeepGradients(TrainerCallback):
    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step_gradients(model_class, tmp_path, batch_size: int, accumulation: int, keys: tuple[str, ...]):
    torch.manual_seed(0)
    model = model_class(tiny_config())
    data = [{k: row[k] for k in keys} for row in _examples()]
    keep = _KeepGradients()
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch_size}"), max_steps=1, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_grad_norm=0.0, learning_rate=1e-3, report_to=[],
        save_strategy="no", use_cpu=True, dataloader_drop_last=True, seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[keep]).train()
    return keep.gradients


@pytest.mark.parametrize(
    ("model_class", "keys"),
    [(GenSSLForCausalLM, ("input_ids", "labels")), (GenSSLForPreTraining, ("input_ids", "labels", "group_ids"))],
    ids=["causal_lm", "pretraining"],
)
def test_gradient_accumulation_equals_one_batch(model_class, keys, tmp_path):
    """Issue 14 bug 1: Trainer passes num_items_in_batch and stops dividing by the accumulation steps, so the model
    must divide the summed token losses by it: 2 micro-batches of 2 give the gradients of one batch of 4."""
    accumulated = _one_step_gradients(model_class, tmp_path, batch_size=2, accumulation=2, keys=keys)
    whole = _one_step_gradients(model_class, tmp_path, batch_size=4, accumulation=1, keys=keys)
    assert accumulated.keys() == whole.keys() and len(whole) > 5
    for name, gradient in whole.items():
        torch.testing.assert_close(accumulated[name], gradient, atol=1e-6, rtol=1e-5, msg=name)


def test_generate_and_cache_use_current_names():
    """Issue 14 bug 4: no 'past_key_values is deprecated' from generate or from a forward pass with a cache."""
    model = GenSSLForCausalLM(tiny_config()).eval()
    hf_logging.warning_once.cache_clear()  # transformers prints each warning once per process
    logger = hf_logging.get_logger("transformers")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(torch.tensor([[1, 7, 8]]), max_new_tokens=3, do_sample=False)
            out = model(torch.tensor([[1, 7, 8]]), use_cache=True)
            model(torch.tensor([[9]]), cache=out.cache, attention_mask=torch.ones(1, 4, dtype=torch.long))
    finally:
        logger.removeHandler(handler)
    messages = records + [str(w.message) for w in caught]
    assert not [m for m in messages if "deprecated" in m], messages


def test_checkpoint_saved_after_trainer_generates_with_cache(tmp_path):
    """Issue 14 bug 5: Trainer sets config.use_cache = False; the saved checkpoint must still use its KV cache."""
    model = GenSSLForCausalLM(tiny_config())
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2,
                             report_to=[], save_strategy="no", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=[{k: r[k] for k in ("input_ids", "labels")}
                                                             for r in _examples(2)])
    assert model.config.use_cache is False  # what Trainer does to the model it trains
    trainer.save_model(str(tmp_path / "saved"))
    loaded = GenSSLForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config.use_cache is True and loaded.generation_config.use_cache is not False
    out = loaded.generate(torch.tensor([[1, 7, 8]]), max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    assert out.cache is not None and out.cache.get_seq_length() > 0


def test_wrong_head_for_the_checkpoint_warns():
    """Issue 14 bug 6: fill-mask on a causal checkpoint / text-generation on a masked one gave silent garbage."""
    with pytest.warns(UserWarning, match="content_attention='bidirectional'.*GenSSLForCausalLM"):
        GenSSLForMaskedLM(tiny_config(content_attention="causal"))
    with pytest.warns(UserWarning, match="content_attention='causal'.*GenSSLForMaskedLM.generate"):
        GenSSLForCausalLM(tiny_config(content_attention="bidirectional"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GenSSLForMaskedLM(tiny_config(content_attention="bidirectional"))
        GenSSLForCausalLM(tiny_config(content_attention="causal"))


def test_lora_config_without_arguments_works():
    peft = pytest.importorskip("peft")
    model = GenSSLForCausalLM(tiny_config())
    lora = peft.get_peft_model(model, peft.LoraConfig())
    adapted = {name.split(".")[-4] for name, _ in lora.named_parameters() if "lora_A" in name}
    assert adapted == {"q_proj", "v_proj"}
    lora(torch.tensor([[1, 7, 8]]), labels=torch.tensor([[1, 7, 8]])).loss.backward()


def test_output_attentions_under_sdpa_warns():
    model = GenSSLForCausalLM(tiny_config()).eval()
    assert model.config._attn_implementation == "sdpa"
    with pytest.warns(UserWarning, match="attn_implementation='eager'"):
        out = model(torch.tensor([[1, 7, 8]]), output_attentions=True)
    assert all(a is None for a in out.attentions)
    model.set_attn_implementation("eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(a is not None for a in model(torch.tensor([[1, 7, 8]]), output_attentions=True).attentions)


# -- issue 13 item 10: model inputs ------------------------------------------------------------------------------


def test_float_group_ids_are_an_error():
    model = GenSSLForPreTraining(tiny_config()).eval()
    with pytest.raises(ValueError, match="group_ids must be an integer tensor"):
        model(torch.tensor([[1, 7, 8, 9]]), group_ids=torch.tensor([[0.0, 0.6, 1.4, 2.0]]))


def test_a_target_never_sees_its_own_token():
    """Rows that see no content (group id at or below the smallest) are no targets: with group ids [0, 0, 1, 1] only
    rows 2 and 3 count; with all group ids equal nothing counts (loss 0, not the old self-seeing loss)."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config(initializer_range=0.5)).eval()
    input_ids = torch.tensor([[1, 7, 8, 9], [1, 30, 40, 50]])
    with torch.no_grad():
        got = model(input_ids, group_ids=torch.tensor([[0, 0, 1, 1]] * 2), labels=input_ids).loss
        expected_labels = input_ids.clone()
        expected_labels[:, :2] = -100
        expected = model(input_ids, group_ids=torch.tensor([[0, 0, 1, 1]] * 2), labels=expected_labels).loss
        torch.testing.assert_close(got, expected)
        all_equal = model(input_ids, group_ids=torch.zeros_like(input_ids), labels=input_ids).loss
    assert all_equal.item() == 0.0
    # perturbation: a target's own token never changes its prediction
    group_ids = torch.tensor([[0, 2, 1, 2]])
    ids = torch.tensor([[1, 7, 8, 9]])
    with torch.no_grad():
        base = model(ids, group_ids=group_ids).logits
        for i in (1, 2, 3):
            changed = ids.clone()
            changed[0, i] = 99
            torch.testing.assert_close(model(changed, group_ids=group_ids).logits[0, i], base[0, i])


def test_labels_all_ignored_give_zero_loss_not_nan():
    for model, extra in ((GenSSLForPreTraining(tiny_config()), {}), (GenSSLForCausalLM(tiny_config()), {}),
                         (GenSSLForMaskedLM(tiny_config(content_attention="bidirectional")), {})):
        loss = model(torch.tensor([[1, 7, 8]]), labels=torch.full((1, 3), -100), **extra).loss
        assert loss.item() == 0.0, type(model).__name__
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("shape", [(0, 4), (2, 0)])
def test_empty_inputs_are_a_clear_error(shape):
    model = GenSSLForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="at least one sequence of at least one token"):
        model(torch.ones(shape, dtype=torch.long))


def test_ids_outside_the_vocabulary_are_a_clear_error():
    model = GenSSLForCausalLM(tiny_config()).eval()
    for bad in (512, -1):
        with pytest.raises(ValueError, match=f"the id {bad}, outside the vocabulary"):
            model(torch.tensor([[1, bad, 3]]))


def test_generate_past_the_position_limit_is_the_forward_error():
    model = GenSSLForCausalLM(tiny_config(max_position_embeddings=8)).eval()
    with pytest.raises(ValueError, match="longer than the model's max_position_embeddings=8") as from_forward:
        model(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than the model's max_position_embeddings=8") as from_generate:
        model.generate(torch.ones(1, 5, dtype=torch.long), max_new_tokens=10, do_sample=False)
    assert str(from_generate.value).split(" is longer")[1] == str(from_forward.value).split(" is longer")[1]


def test_model_type_mismatch_is_an_error(tmp_path):
    from hf_genssl import GenSSLViTConfig, GenSSLViTModel

    GenSSLViTConfig(image_size=8, patch_size=2, hidden_size=16, num_hidden_layers=1, num_attention_heads=4
                    ).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="model_type 'genssl_vit' but GenSSLConfig"):
        GenSSLForCausalLM.from_pretrained(tmp_path / "vit")
    tiny_config().save_pretrained(tmp_path / "text")
    with pytest.raises(ValueError, match="model_type 'genssl' but GenSSLViTConfig"):
        GenSSLViTModel.from_pretrained(tmp_path / "text")


def test_unknown_config_keys_warn(tmp_path):
    with pytest.warns(UserWarning, match=r"does not know the key\(s\) \['hiden_size'\]"):
        tiny_config(hiden_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_config().save_pretrained(tmp_path)
        type(tiny_config()).from_pretrained(tmp_path)
        AutoConfig.from_pretrained(tmp_path)  # passes name_or_path= to __init__


def test_plain_training_forward_projects_only_at_targets():
    """Issue 14: the forward a Trainer calls computes the vocabulary projection at the targets only (training mode)."""
    torch.manual_seed(0)
    model = GenSSLForPreTraining(tiny_config(content_attention="bidirectional"))
    input_ids = torch.tensor([[1, 7, 4, 9, 4, 11]])
    labels = torch.full_like(input_ids, -100)
    labels[0, [2, 4]] = torch.tensor([8, 10])
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    train_loss = model.train()(input_ids, labels=labels).loss
    eval_out = model.eval()(input_ids, labels=labels)
    assert seen == [(2, 32), (1, 6, 32)]
    torch.testing.assert_close(train_loss, eval_out.loss)
