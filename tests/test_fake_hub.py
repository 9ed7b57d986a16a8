"""The fake Hub speaks enough of the Hub API for the real huggingface_hub and transformers clients.

A tiny BERT classifier is pushed with ``push_to_hub`` and ``upload_folder`` and comes back with identical
weights: in this process, and in a fresh interpreter that can only reach the model over HTTP.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from tests.fake_hub import (
    FAKE_TOKEN,
    FAKE_USER,
    fake_hub,
    git_blob_sha1,
    hub_online,
    push_and_reload,
    state_dict_hash,
)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def hub(tmp_path):
    """A running fake Hub that this process's huggingface_hub/transformers talk to, online."""
    with fake_hub(tmp_path / "server") as endpoint, hub_online(endpoint):
        yield endpoint


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub, token=FAKE_TOKEN)


@pytest.fixture(scope="module")
def tiny_bert_checkpoint(tmp_path_factory):
    model = tiny_bert()
    path = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(path)
    return path, state_dict_hash(model)


def test_push_to_hub_then_download_in_process(hub, tmp_path):
    model = tiny_bert()
    commit = model.push_to_hub("tiny-bert", commit_message="tiny model")
    repo_id = f"{FAKE_USER}/tiny-bert"
    assert commit.oid == hub.hub.store.repo(repo_id).refs["main"]

    stored = hub.hub.files(repo_id)
    assert {"config.json", "model.safetensors", "README.md"} <= set(stored)
    assert len(json.loads(stored["config.json"])["id2label"]) == 3

    cache = tmp_path / "cache"
    reloaded = AutoModelForSequenceClassification.from_pretrained(repo_id, cache_dir=cache)
    assert state_dict_hash(reloaded) == state_dict_hash(model)
    config_path = hf_hub_download(repo_id, "config.json", cache_dir=cache)
    assert Path(config_path).read_bytes() == stored["config.json"]
    snapshot = snapshot_download(repo_id, cache_dir=tmp_path / "snapshot_cache")
    assert {p.name for p in Path(snapshot).iterdir()} == set(stored)
    assert hub.hub.unhandled == []


@pytest.mark.slow
def test_push_and_reload_in_a_fresh_process(tiny_bert_checkpoint):
    path, expected_hash = tiny_bert_checkpoint
    result = push_and_reload(
        path, "tiny-bert", "AutoModelForSequenceClassification", trust_remote_code=False, hide_packages=["hf_genssl"]
    )
    assert result.identical
    assert result.hub_hash == expected_hash
    assert result.model_class == "BertForSequenceClassification"
    assert result.repo_id == f"{FAKE_USER}/tiny-bert"
    assert {"config.json", "model.safetensors"} <= set(result.hub_files)


def test_upload_folder_updates_skips_unchanged_and_deletes(api, hub, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one")
    (folder / "sub" / "b.txt").write_text("two")
    repo_id = api.create_repo("files", exist_ok=True).repo_id
    assert api.create_repo("files", exist_ok=True).repo_id == repo_id  # 409 accepted with exist_ok
    first = api.upload_folder(folder_path=folder, repo_id=repo_id)

    again = api.upload_folder(folder_path=folder, repo_id=repo_id)  # nothing changed: no new commit
    assert again.oid == first.oid

    (folder / "a.txt").write_text("changed")
    (folder / "sub" / "b.txt").unlink()
    api.upload_folder(folder_path=folder, repo_id=repo_id, delete_patterns=["sub/*"])
    assert hub.hub.files(repo_id) == {".gitattributes": hub.hub.files(repo_id)[".gitattributes"], "a.txt": b"changed"}
    assert hub.hub.files(repo_id, revision=first.oid)["sub/b.txt"] == b"two"  # history is kept

    assert api.model_info(repo_id).sha == hub.hub.store.repo(repo_id).refs["main"]
    top_level = {entry.path for entry in api.list_repo_tree(repo_id, revision=first.oid)}
    assert top_level == {".gitattributes", "a.txt", "sub"}
    everything = {entry.path for entry in api.list_repo_tree(repo_id, revision=first.oid, recursive=True)}
    assert everything == {".gitattributes", "a.txt", "sub", "sub/b.txt"}


def test_resolve_headers_and_range(api, hub, tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "data.bin").write_bytes(bytes(range(100)))
    repo_id = api.create_repo("headers").repo_id
    commit = api.upload_folder(folder_path=tmp_path / "f", repo_id=repo_id)

    request = urllib.request.Request(f"{hub}/{repo_id}/resolve/main/data.bin", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["X-Repo-Commit"] == commit.oid
        assert response.headers["ETag"] == f'"{git_blob_sha1(bytes(range(100)))}"'
        assert response.headers["Content-Length"] == "100"
    ranged = urllib.request.Request(f"{hub}/{repo_id}/resolve/{commit.oid}/data.bin", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(ranged, timeout=5) as response:
        assert response.status == 206 and response.read() == bytes(range(10, 20))


def test_errors_map_to_the_clients_exceptions(api, hub, tmp_path):
    repo_id = api.create_repo("errors").repo_id
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{FAKE_USER}/missing", "config.json", cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="nope", cache_dir=tmp_path)
    with pytest.raises(HfHubHTTPError) as bad_token:
        HfApi(endpoint=hub, token="wrong").create_repo("other")
    assert bad_token.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as foreign:
        api.create_repo("someone-else/model", exist_ok=True)
    assert foreign.value.response.status_code == 403
    assert api.whoami()["name"] == FAKE_USER

    private_id = api.create_repo("secret", private=True).repo_id
    assert api.model_info(private_id).private
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub, token=False).model_info(private_id)


def test_server_stops_at_the_end_of_its_context(tmp_path):
    with fake_hub(tmp_path) as endpoint, hub_online(endpoint):
        HfApi(endpoint=endpoint, token=FAKE_TOKEN).create_repo("keepalive")  # leaves a pooled connection open
        port = int(endpoint.rsplit(":", 1)[1])
        started = time.monotonic()
    assert time.monotonic() - started < 5
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{endpoint}/api/whoami-v2", timeout=1)


def test_the_fake_hub_serves_from_the_command_line(tmp_path):
    """`python tests/fake_hub.py serve` (the README's recipe) prints an endpoint the real client can push to."""
    import subprocess
    import sys

    from huggingface_hub import HfApi

    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_hub.py")), "serve", "--root",
                               str(tmp_path / "repos")], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        endpoint = line.split("fake Hub at ", 1)[1].split()[0]
        with hub_online(endpoint):
            url = HfApi(endpoint=endpoint, token=FAKE_TOKEN).create_repo("served")
        assert str(url) == f"{endpoint}/{FAKE_USER}/served"
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
