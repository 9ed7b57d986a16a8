"""Publishing: push_checkpoint against the fake Hub and a dead endpoint, and the model cards it publishes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError

import hf_genssl
from hf_genssl import GenSSLModel
from hf_genssl.hub import HubPushError, describe_failure, push_checkpoint
from hf_genssl.model_card import CITATION, render_model_card, template_path, write_model_card
from tests.conftest import tiny_config
from tests.fake_hub import FAKE_TOKEN, FAKE_USER, fake_hub, hub_online

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD_FIELDS = {
    "repo_id": f"{FAKE_USER}/genssl-tiny",
    "objective": "semi_autoregressive",
    "objective_hparams": {"group_size": 2, "learning_rate": 3e-4},
    "model_details": {"hidden_size": 32, "num_hidden_layers": 2},
    "training_data": "Random sentences made by the test suite.",
    "datasets": ["sotu"],
    "language": "en",
    "results": {"sst2": {"accuracy": 0.8125}, "cola": {"matthews_correlation": 0.25}},
    "results_data": "the validation split of a toy dataset",
    "results_hardware": "2 CPU cores",
}


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time: equal before and after means the folder was not touched."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny GenSSL checkpoint (weights, code files, tokenizer) with a rendered model card."""
    path = tmp_path_factory.mktemp("checkpoint")
    GenSSLModel(tiny_config()).save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_model_card(path, "language_model", CARD_FIELDS)
    return path


@pytest.fixture
def hub(tmp_path):
    with fake_hub(tmp_path / "server") as endpoint, hub_online(endpoint):
        yield endpoint


# ----------------------------------------------------------------------------------------------- push_checkpoint


def test_push_checkpoint_uploads_files_and_card(checkpoint, hub):
    before = folder_state(checkpoint)
    url = push_checkpoint(checkpoint, "genssl-tiny", token=FAKE_TOKEN, endpoint=hub, commit_message="first")
    assert url == f"{hub}/{FAKE_USER}/genssl-tiny"
    assert folder_state(checkpoint) == before

    on_server = hub.hub.files(f"{FAKE_USER}/genssl-tiny")
    local = {name: content for name, (content, _) in before.items()}
    assert {name: on_server[name] for name in local} == local
    assert {"config.json", "model.safetensors", "modeling_genssl.py", "tokenizer.json", "README.md"} <= set(on_server)

    card = ModelCard.load(f"{FAKE_USER}/genssl-tiny", token=FAKE_TOKEN)  # downloaded through the fake Hub
    assert card.data.library_name == "transformers"
    assert card.data.tags == ["hf_genssl", "semi_autoregressive"]
    assert card.data.datasets == ["sotu"]

    assert push_checkpoint(checkpoint, f"{FAKE_USER}/genssl-tiny", token=FAKE_TOKEN, endpoint=hub) == url  # exists


def test_push_to_a_dead_endpoint_fails_fast_and_keeps_the_folder(checkpoint, monkeypatch):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    before = folder_state(checkpoint)
    started = time.monotonic()
    with hub_online(dead), pytest.raises(HubPushError) as failure:
        push_checkpoint(checkpoint, "genssl-tiny", token=FAKE_TOKEN, endpoint=dead)
    assert time.monotonic() - started < 5
    message = str(failure.value)
    assert "connection refused" in message and dead in message
    assert f"the local checkpoint at {checkpoint} is intact" in message
    assert message.count(". ") == 0  # one sentence
    assert folder_state(checkpoint) == before


def test_push_in_offline_mode_says_so(checkpoint, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="offline mode.*intact"):
        push_checkpoint(checkpoint, "genssl-tiny", token=FAKE_TOKEN, endpoint="http://127.0.0.1:9")


def test_push_with_a_bad_token_or_foreign_namespace_says_why(checkpoint, hub):
    before = folder_state(checkpoint)
    with pytest.raises(HubPushError, match=r"rejected the token \(HTTP 401.*intact"):
        push_checkpoint(checkpoint, "genssl-tiny", token="not-a-token", endpoint=hub)
    with pytest.raises(HubPushError, match=r"may not write to someone-else/genssl-tiny \(HTTP 403.*intact"):
        push_checkpoint(checkpoint, "someone-else/genssl-tiny", token=FAKE_TOKEN, endpoint=hub)
    assert folder_state(checkpoint) == before


def test_missing_repository_is_described_as_not_found(hub, tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "x.txt").write_text("x")
    with pytest.raises(RepositoryNotFoundError) as err:  # a real error from the client, without create_repo first
        HfApi(endpoint=hub, token=FAKE_TOKEN).upload_folder(folder_path=tmp_path / "f", repo_id=f"{FAKE_USER}/absent")
    assert "was not found" in describe_failure(err.value, hub, f"{FAKE_USER}/absent")


def test_missing_folder_is_not_a_hub_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was pushed"):
        push_checkpoint(tmp_path / "absent", "genssl-tiny", endpoint="http://127.0.0.1:9")


# ----------------------------------------------------------------------------------------------- model cards


def test_language_card_has_metadata_sections_results_and_citation():
    text = render_model_card("language_model", **CARD_FIELDS)
    card = ModelCard(text)
    metadata = card.data.to_dict()
    model_index = metadata.pop("model-index")
    assert metadata == {
        "datasets": ["sotu"],
        "language": "en",
        "library_name": "transformers",
        "license": "apache-2.0",
        "pipeline_tag": "text-generation",
        "tags": ["hf_genssl", "semi_autoregressive"],
    }
    assert model_index[0]["name"] == "genssl-tiny"
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == [
        "Model description",
        "Objective",
        "Training data",
        "Results",
        "How to load",
        "Limitations",
        "Citation",
    ]
    assert "| sst2 | accuracy | 0.8125 |" in text and "| cola | matthews_correlation | 0.25 |" in text
    assert "Measured on the validation split of a toy dataset, on 2 CPU cores." in text
    assert "| `group_size` | 2 |" in text and "| `learning_rate` | 0.0003 |" in text
    assert "AutoModel.from_pretrained(repo, trust_remote_code=True)" in text
    assert f'repo = "{FAKE_USER}/genssl-tiny"' in text
    assert CITATION in text and "Look Ahead or Look Around?" in text
    assert "`results/<scale>/RESULTS.md`" in text and "genssl reproduce" in text  # links the objectives' comparison


def test_vision_card_and_flat_results():
    text = render_model_card(
        "vision_model",
        repo_id="me/genssl-vit",
        objective="variable_length_masked",
        objective_hparams={"mask_ratio_range": (0.1, 0.9)},
        results={"linear_probe_accuracy": 0.7},
        results_data="Fashion-MNIST test set",
        results_hardware="1 NVIDIA H100",
        tags=["vision"],
    )
    card = ModelCard(text)
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.tags == ["hf_genssl", "variable_length_masked", "vision"]
    assert "| linear_probe_accuracy | 0.7 |" in text and "| `mask_ratio_range` | (0.1, 0.9) |" in text
    assert "`results/<scale>/RESULTS.md`" in text
    assert "AutoModel.from_pretrained(repo, trust_remote_code=True)" in text


def test_card_numbers_keep_their_precision():
    """A learning rate of 1e-5 read as 0.0000 once; small and large floats keep 6 significant digits."""
    text = render_model_card("language_model", repo_id="a/b", objective="semi_autoregressive",
                             objective_hparams={"learning_rate": 1e-5, "cut_probability": 0.5, "big": 123456.7},
                             results={"perplexity": 1234.5678}, results_data="x", results_hardware="y")
    assert "| `learning_rate` | 1e-05 |" in text and "| `cut_probability` | 0.5 |" in text
    assert "| `big` | 123457 |" in text and "| perplexity | 1234.57 |" in text
    assert "0.0000" not in text


@pytest.mark.parametrize("objective,tag", [("masked", "fill-mask"), ("variable_length_masked", "fill-mask"),
                                           ("semi_autoregressive", "text-generation"),
                                           ("autoregressive", "text-generation")])
def test_pipeline_tag_follows_the_objective(objective, tag):
    """Masked checkpoints were tagged text-generation: the Hub's widget then ran the wrong pipeline."""
    assert ModelCard(render_model_card("language_model", repo_id="a/b", objective=objective)).data.pipeline_tag == tag
    vision = render_model_card("vision_model", repo_id="a/b", objective=objective)
    assert ModelCard(vision).data.pipeline_tag == "image-feature-extraction"


def test_results_go_to_model_index_metadata():
    """The Hub reads evaluation results from `model-index`: one entry per task and metric, values exact."""
    from huggingface_hub import EvalResult

    card = ModelCard(render_model_card("language_model", **CARD_FIELDS))
    assert card.data.model_name == "genssl-tiny"
    assert [(r.task_type, r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("text-generation", "sst2", "accuracy", 0.8125), ("text-generation", "cola", "matthews_correlation", 0.25)]
    flat = ModelCard(render_model_card("language_model", repo_id="me/m", objective="masked",
                                       results={"validation loss": 2.5}, results_data="held-out text",
                                       results_dataset="sotu", results_task="fill-mask", results_hardware="CPU"))
    assert flat.data.eval_results == [EvalResult(task_type="fill-mask", dataset_type="sotu", dataset_name="sotu",
                                                 metric_type="validation_loss", metric_name="validation loss",
                                                 metric_value=2.5)]
    assert ModelCard(render_model_card("language_model", repo_id="a/b", objective="masked")).data.eval_results is None


def test_tokenizer_line_trusts_remote_code_only_when_the_tokenizer_ships_code(tmp_path):
    import json

    plain, custom = tmp_path / "plain", tmp_path / "custom"
    for folder, config in ((plain, {"tokenizer_class": "PreTrainedTokenizerFast"}),
                           (custom, {"tokenizer_class": "MyTokenizer",
                                     "auto_map": {"AutoTokenizer": ["tokenization_my.MyTokenizer", None]}})):
        folder.mkdir()
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        write_model_card(folder, "language_model", {"repo_id": "me/m", "objective": "masked"})
    assert "AutoTokenizer.from_pretrained(repo)\n" in (plain / "README.md").read_text()
    assert "AutoTokenizer.from_pretrained(repo, trust_remote_code=True)\n" in (custom / "README.md").read_text()


def test_pretraining_card_lists_the_objectives_own_hyper_parameters(tmp_path):
    """A semi-AR card listed mask_ratio_range (a masked objective's setting) and a masked card group_size."""
    from hf_genssl.pretraining import OBJECTIVES, _card_fields, load_config

    def hparams(**values):
        cfg = load_config(values)
        return _card_fields(tmp_path / "final", cfg, OBJECTIVES[cfg.objective], [], "data", 1.0)["objective_hparams"]

    assert hparams(objective="semi_ar", group_size=3) == {"group_size": 3}
    assert hparams(objective="semi_ar", group_size="random") == {"group_size": "random", "cut_probability": 0.5}
    assert hparams(objective="ar") == {}
    assert hparams(objective="variable_masked", mask_ratio_range=[0.1, 0.9]) == {"mask_ratio_range": [0.1, 0.9]}
    assert set(hparams(objective="vit_masked", mask_ratio_range=[0.75, 0.75])) == {"mask_ratio_range",
                                                                                   "norm_pix_loss"}


def test_a_pushed_card_names_the_repo_it_was_pushed_to(hub, tmp_path, texts):
    """`genssl pretrain --push-to-hub --hub-model-id genssl-tiny` once published a card titled "final" with
    `repo = "final"`: the card on the Hub names the repo (namespace included), the local card is left as written."""
    from hf_genssl.pretraining import run_pretraining

    config = {"texts": texts, "vocab_size": 300, "seq_len": 32, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "batch_size": 8, "max_steps": 2, "eval_every": 2, "save_every": 1000,
              "learning_rate": 1e-5, "objective": "masked", "progress": False, "output_dir": str(tmp_path / "run"),
              "push_to_hub": True, "hub_model_id": "genssl-tiny"}
    run_pretraining(config)  # the `hub` fixture points huggingface_hub at the fake Hub with its token
    local = (tmp_path / "run" / "final" / "README.md").read_text()
    pushed = hub.hub.files(f"{FAKE_USER}/genssl-tiny")["README.md"].decode()
    assert pushed.split("\n---\n", 1)[1].lstrip().startswith(f"# {FAKE_USER}/genssl-tiny\n")
    assert f'repo = "{FAKE_USER}/genssl-tiny"' in pushed and "final" not in re.findall(r'repo = "(.*)"', pushed)[0]
    card = ModelCard(pushed)
    assert card.data.pipeline_tag == "fill-mask" and card.data.model_name == f"{FAKE_USER}/genssl-tiny"
    assert card.data.eval_results[0].metric_name == "validation loss"
    assert "| `learning rate` | 1e-05 |" in pushed and "group_size" not in pushed
    assert local != pushed and 'repo = "genssl-tiny"' in local  # the local card: the repo id as configured


def test_card_fields_are_checked():
    with pytest.raises(ValueError, match="data and hardware"):
        render_model_card("language_model", repo_id="a/b", objective="masked", results={"accuracy": 0.5})
    with pytest.raises(TypeError, match="Unknown model card field"):
        render_model_card("language_model", repo_id="a/b", objective="masked", result={"accuracy": 0.5})
    with pytest.raises(TypeError, match="Missing required"):
        render_model_card("language_model", repo_id="a/b")
    with pytest.raises(ValueError, match="objective_description"):
        render_model_card("language_model", repo_id="a/b", objective="my_objective")
    custom = render_model_card("language_model", repo_id="a/b", objective="my_objective", objective_description="X.")
    assert "(`my_objective`): X." in custom and "No results have been measured" in custom
    with pytest.raises(ValueError, match="Unknown model card template"):
        render_model_card("audio_model", repo_id="a/b", objective="masked")


def test_templates_ship_in_the_package_and_are_linked_from_the_repo_root():
    for name in ("language_model", "vision_model"):
        shipped = template_path(name)
        assert shipped.parent == Path(hf_genssl.__file__).parent / "model_cards"
        assert (REPO_ROOT / "model_cards" / f"{name}.md").resolve() == shipped.resolve()


def test_the_vision_cards_loading_snippet_runs(tmp_path):
    """The vision card's "How to load" block runs on a checkpoint saved as pretraining saves it (model + the image
    processor that fixes its pixel scale)."""
    from hf_genssl import GenSSLViTConfig, GenSSLViTForPreTraining
    from hf_genssl.pretraining import PretrainConfig, _image_processor

    config = GenSSLViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2)
    GenSSLViTForPreTraining(config).save_pretrained(tmp_path)
    _image_processor(PretrainConfig(image_size=16)).save_pretrained(tmp_path)
    fields = {"objective": "masked", "objective_hparams": {}}
    text = render_model_card("vision_model", repo_id=str(tmp_path), **fields)
    snippet = re.search(r"## How to load.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(snippet, "model card", "exec"), namespace)  # noqa: S102 - running the documented code is the test
    assert namespace["pixel_values"].shape == (1, 1, 16, 16) and float(namespace["pixel_values"].max()) == 0.0
    assert namespace["features"].shape[-1] == 32


def test_the_cards_loading_snippet_runs(checkpoint):
    """The "How to load" code block, pointed at a local copy of the checkpoint, runs as written."""
    text = render_model_card("language_model", **{**CARD_FIELDS, "repo_id": str(checkpoint)})
    snippet = re.search(r"## How to load.*?```python\n(.*?)```", text, re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(snippet, "model card", "exec"), namespace)  # noqa: S102 - running the documented code is the test
    assert namespace["features"].shape[-1] == tiny_config().hidden_size
