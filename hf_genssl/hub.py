"""Publish a saved checkpoint folder to the Hugging Face Hub, failing with one clear sentence.

``push_checkpoint`` is ``HfApi.create_repo(exist_ok=True)`` + ``HfApi.upload_folder``: it reads the folder and
never writes to it, so whatever happens on the network the local checkpoint stays as it was. Errors from
``huggingface_hub``/``httpx`` are many and verbose (connection errors, HTTP errors with request ids, offline
mode); they become a ``HubPushError`` that says why the push failed and that the local copy is intact, with
the original exception chained for details.

Timing without a server: ``create_repo`` is a single POST without retries, so a dead endpoint fails in
milliseconds. Only calls after it (preupload, commit) go through ``huggingface_hub``'s backoff (5 retries,
1+2+4+8+8 s, not configurable by environment variable in huggingface_hub 2.x).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

__all__ = ["HubPushError", "PushResult", "check_hub_model_id", "from_pretrained", "push_checkpoint",
           "push_finished_run"]

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload hf_genssl checkpoint"


class HubPushError(RuntimeError):
    """Pushing a checkpoint to the Hub failed; the message says why and that the local folder is untouched."""


def push_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    endpoint: str | None = None,
    revision: str | None = None,
    card: Callable[[str], str] | None = None,
) -> str:
    """Upload every file of ``checkpoint_dir`` to the model repo ``repo_id`` (created if needed); return its URL.

    ``token`` defaults to the saved login or ``HF_TOKEN``; ``endpoint`` to ``HF_ENDPOINT`` (the public Hub).
    The folder is only read. Files already on the Hub with identical content are not re-sent.
    ``card`` renders the model card for the repo it goes to: called with the full repo id (``user/name``, the
    namespace resolved by the Hub), its text replaces the folder's ``README.md`` on the Hub, in the same commit.

    Raises:
        FileNotFoundError: ``checkpoint_dir`` is not a folder (nothing was sent).
        HubPushError: the Hub could not be reached, refused the token, or the repo was not found or not writable.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {folder} does not exist; nothing was pushed.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if card is None:
            commit = api.upload_folder(
                folder_path=folder, repo_id=repo_url.repo_id, commit_message=commit_message, revision=revision
            )
        else:
            files = [p for p in sorted(folder.rglob("*"))
                     if p.is_file() and p.relative_to(folder).parts[0] not in (".git", ".cache")]
            operations = [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in files
                          if p.relative_to(folder).as_posix() != "README.md"]
            operations.append(CommitOperationAdd("README.md", card(repo_url.repo_id).encode("utf-8")))
            commit = api.create_commit(repo_url.repo_id, operations, commit_message=commit_message, revision=revision)
    except Exception as err:
        reason = describe_failure(err, api.endpoint, repo_id)
        raise HubPushError(
            f"Pushing {repo_id} to {api.endpoint} failed because {reason}; the local checkpoint at {folder} is intact."
        ) from err
    logger.info("Pushed %s to %s (commit %s)", folder, repo_url, commit.oid)
    return str(repo_url)


def check_hub_model_id(push_to_hub: bool, hub_model_id: str | None) -> None:
    """A push needs the repo named (``hub_model_id``): guessed from the output folder it would publish a run called
    ``final`` or ``pretrain`` under the user's account. Checked before any work, by pretraining and fine-tuning."""
    if push_to_hub and not hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id (--hub-model-id user/name): the Hub repo is not guessed from "
                         "the output folder's name.")


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_finished_run` did: the repo's URL, or the error to raise once the caller's own bookkeeping
    is done."""

    url: str | None = None
    error: HubPushError | None = None

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def push_finished_run(folder: str | os.PathLike[str], repo_id: str, card: Callable[[str], str] | None = None
                      ) -> PushResult:
    """Push the saved final checkpoint of a run (pretraining or fine-tuning) with :func:`push_checkpoint`.

    A :class:`HubPushError` is returned, not raised: the run itself is saved, and the caller first finishes what
    must happen either way (its results file, the other processes of a distributed run), then calls
    :meth:`PushResult.raise_error`, so that it, and the CLI's exit status (2), still learn that the push failed."""
    try:
        return PushResult(url=push_checkpoint(folder, repo_id, card=card))
    except HubPushError as error:
        return PushResult(error=error)


def from_pretrained(auto_class, name_or_path: str | os.PathLike[str], *, trust_remote_code: bool = False, **kwargs):
    """``auto_class.from_pretrained`` that never runs a checkpoint's own code unless ``trust_remote_code=True``.

    GenSSL checkpoints do not need it: importing ``hf_genssl`` registers their classes with the ``Auto*`` factories,
    and with ``trust_remote_code=False`` transformers uses those even when the checkpoint ships an ``auto_map``.
    A folder or Hub repo whose model type is unknown here and that brings code of its own is refused with a
    message naming ``--trust-remote-code`` (the flag of transformers' example scripts, and of ``genssl``).
    """
    try:
        return auto_class.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as error:
        if trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{name_or_path} ships its own Python code (an auto_map for a model type hf_genssl does not know); it was "
            "not run. Pass --trust-remote-code (trust_remote_code=True in Python) only if you trust its author."
        ) from error


def _chain(err: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, outermost first (httpx errors often hide behind wrappers)."""
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_kind(err: BaseException, *names: str) -> bool:
    """Match by class name along the MRO, so this works for httpx and httpx2 (huggingface_hub 1.x and 2.x)."""
    return any(cls.__name__ in names for cls in type(err).__mro__)


def describe_failure(err: BaseException, endpoint: str, repo_id: str) -> str:
    """Why a Hub call failed, as a clause that completes "... failed because <reason>"."""
    chain = _chain(err)
    for item in chain:
        if isinstance(item, OfflineModeIsEnabled):
            return "huggingface_hub is in offline mode (unset HF_HUB_OFFLINE to push)"
        if isinstance(item, RepositoryNotFoundError):
            return f"the repository {repo_id} was not found or is not visible with this token (HTTP 404)"
        if isinstance(item, HfHubHTTPError) and item.response is not None:
            return _describe_http_status(item.response.status_code, repo_id)
    for item in chain:
        if isinstance(item, ConnectionRefusedError) or "connection refused" in str(item).lower():
            return f"nothing is listening at {endpoint} (connection refused)"
        if isinstance(item, socket.gaierror) or "name or service not known" in str(item).lower():
            return f"the host of {endpoint} could not be resolved ({item})"
        if _is_kind(item, "ConnectError", "NetworkError"):
            return f"{endpoint} could not be reached ({item})"
        if isinstance(item, TimeoutError) or _is_kind(item, "TimeoutException"):
            return f"the connection to {endpoint} timed out"
        if isinstance(item, ValueError) and "metadata" in str(item):
            return f"the Hub rejected the model card metadata ({str(item).splitlines()[0]})"
    return f"of an unexpected {type(err).__name__}: {err}"


def _describe_http_status(status: int, repo_id: str) -> str:
    if status == 401:
        return "the Hub rejected the token (HTTP 401: log in with `hf auth login` or pass a valid token)"
    if status == 403:
        return f"the token may not write to {repo_id} (HTTP 403: check the namespace and the token's role)"
    if status == 404:
        return f"the repository {repo_id} was not found or is not visible with this token (HTTP 404)"
    return f"the Hub answered HTTP {status}"
