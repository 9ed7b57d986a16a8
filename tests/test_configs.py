"""What ``--config`` names (issue 13, item 5): a bare name is a shipped config (package data), anything else a
file; a name that could be both is an error, never a guess."""

from __future__ import annotations

import pytest
import yaml

from hf_genssl.configs import config_names, resolve_config, shipped_config
from hf_genssl.pretraining import load_config


def test_a_bare_name_is_the_shipped_config_wherever_the_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("tiny").hidden_size == yaml.safe_load(shipped_config("tiny").read_text())["hidden_size"]
    assert "experiments" not in config_names() and "reproduce" not in config_names()


@pytest.mark.parametrize("make", ["folder", "file"])
def test_a_name_that_is_also_a_path_in_the_working_directory_is_ambiguous(tmp_path, monkeypatch, make):
    """`--output-dir tiny` then `--config tiny` used to read the run folder (or a stray file) instead of the
    shipped config."""
    monkeypatch.chdir(tmp_path)
    if make == "folder":
        (tmp_path / "tiny").mkdir()
    else:
        (tmp_path / "tiny").write_text("hidden_size: 8\n")
    with pytest.raises(ValueError, match=r"'tiny' is ambiguous.*shipped config.*\./tiny"):
        load_config("tiny")
    if make == "file":  # the way out the message names
        assert load_config("./tiny").hidden_size == 8


def test_paths_must_be_yaml_files_or_existing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("hidden_size: 16\n")
    (tmp_path / "plain").write_text("hidden_size: 24\n")
    (tmp_path / "runs").mkdir()
    assert load_config("mine.yaml").hidden_size == 16
    assert load_config(tmp_path / "mine.yaml").hidden_size == 16
    assert load_config("plain").hidden_size == 24  # not a shipped name: an existing file is read
    with pytest.raises(FileNotFoundError, match=r"No config file 'missing.yml'.*shipped configs \['paper'"):
        load_config("missing.yml")
    with pytest.raises(FileNotFoundError, match="not a shipped config"):
        load_config("tinyy")
    with pytest.raises(ValueError, match="is a folder, not a YAML config"):
        load_config("runs")
    with pytest.raises(FileNotFoundError):
        resolve_config("sub/tiny")  # a path, not a name, even though its last part is a shipped name
