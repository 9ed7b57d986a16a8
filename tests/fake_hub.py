"""A local fake Hugging Face Hub for tests: the real ``huggingface_hub`` client pushes to it and pulls from it.

No installable package serves the Hub's upload API locally, and the real Hub is unreachable here, so this
module answers the few HTTP routes that ``huggingface_hub`` 2.x and ``transformers`` 5.x use to create a
repo, upload a folder and download it again (see ``_Handler`` for the list). The server is stdlib only (the
client-side helpers import huggingface_hub/transformers/torch when called), binds to 127.0.0.1 on a free port,
keeps its repos in a temporary folder and stops itself when its context ends.

Every file is stored as a *regular* git blob (the preupload answer is always "regular", so the client sends
contents base64-encoded inside the commit call: no LFS, no Xet). Repo ids always have a namespace
(``create_repo("name")`` lands in the token owner's namespace, as on the Hub).

Use in-process with :func:`hub_online` (patches the endpoint and offline switches ``huggingface_hub`` read at
import time), or from a subprocess with :func:`subprocess_env`. :func:`push_and_reload` pushes a checkpoint
folder and reloads it with an Auto class in a fresh interpreter, comparing state-dict hashes.

Running this file as a script: ``python tests/fake_hub.py serve`` serves a fake Hub until interrupted (it prints
the endpoint, user and token to use; see the README), and ``python tests/fake_hub.py reload ...`` is the child side
of :func:`push_and_reload`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "FAKE_ORG",
    "FAKE_TOKEN",
    "FAKE_USER",
    "FakeHub",
    "FakeHubEndpoint",
    "ReloadResult",
    "fake_hub",
    "git_blob_sha1",
    "hub_online",
    "push_and_reload",
    "reload_in_fresh_process",
    "state_dict_hash",
    "subprocess_env",
]

logger = logging.getLogger(__name__)

FAKE_TOKEN = "fake"
FAKE_USER = "fake-user"
FAKE_ORG = "fake-org"
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """Git's blob id, which the Hub uses as the ETag of regular files and the client as their local oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ----------------------------------------------------------------------------------------------- storage


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, str]  # path -> blob sha1
    title: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)


class HubError(Exception):
    """An HTTP error answered the way the Hub does (status, ``X-Error-Code``, ``X-Error-Message``)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


class RepoStore:
    """Repos, commits and content-addressed blobs under ``root``; one lock serialises every access."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self._counter = 0

    # -- blobs
    def put_blob(self, content: bytes) -> str:
        oid = git_blob_sha1(content)
        path = self.root / "blobs" / oid
        if not path.exists():
            path.write_bytes(content)
        return oid

    def blob(self, oid: str) -> bytes:
        return (self.root / "blobs" / oid).read_bytes()

    def blob_size(self, oid: str) -> int:
        return (self.root / "blobs" / oid).stat().st_size

    # -- repos
    def repo(self, repo_id: str) -> Repo:
        with self.lock:
            if repo_id not in self.repos:
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
            return self.repos[repo_id]

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo")
            repo = Repo(repo_id=repo_id, private=private, created_at=_now())
            self.repos[repo_id] = repo
            # The Hub starts every repo with a commit holding a .gitattributes, so "main" always resolves.
            self._add_commit(repo, None, {".gitattributes": self.put_blob(_GITATTRIBUTES)}, "initial commit", "main")
            return repo

    def delete_repo(self, repo_id: str) -> None:
        with self.lock:
            self.repo(repo_id)
            del self.repos[repo_id]
            self._persist_index()

    def resolve(self, repo: Repo, revision: str) -> Commit:
        with self.lock:
            oid = repo.refs.get(revision, revision)
            if oid not in repo.commits:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[oid]

    def commit(
        self,
        repo: Repo,
        branch: str,
        additions: Mapping[str, bytes],
        deletions: Iterable[str],
        title: str,
        parent_commit: str | None = None,
    ) -> Commit:
        with self.lock:
            if branch not in repo.refs:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.refs[branch]]
            if parent_commit is not None and not head.oid.startswith(parent_commit):
                raise HubError(412, f"A commit has happened since. Please refresh and try again. (head {head.oid})")
            files = dict(head.files)
            for path in deletions:
                if path.endswith("/"):  # a folder
                    gone = [p for p in files if p.startswith(path)]
                else:
                    gone = [path] if path in files else []
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            for path, content in additions.items():
                files[path] = self.put_blob(content)
            return self._add_commit(repo, head.oid, files, title, branch)

    def create_branch(self, repo: Repo, branch: str, starting_point: str | None) -> None:
        with self.lock:
            if branch in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.refs[branch] = self.resolve(repo, starting_point or "main").oid
            self._persist(repo)

    def _add_commit(self, repo: Repo, parent: str | None, files: dict[str, str], title: str, branch: str) -> Commit:
        self._counter += 1
        seed = json.dumps([parent, sorted(files.items()), title, self._counter, repo.repo_id]).encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, files, title, _now())
        repo.commits[commit.oid] = commit
        repo.refs[branch] = commit.oid
        self._persist(repo)
        return commit

    def _persist(self, repo: Repo) -> None:
        """Write the repo's refs and commits as JSON next to the blobs, so a failing test can be inspected."""
        path = self.root / "repos" / f"{repo.repo_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "private": repo.private,
            "refs": repo.refs,
            "commits": {oid: vars(c) for oid, c in repo.commits.items()},
        }
        path.write_text(json.dumps(data, indent=1))
        self._persist_index()

    def _persist_index(self) -> None:
        (self.root / "repos.json").write_text(json.dumps(sorted(self.repos)))

    def last_commit_touching(self, repo: Repo, commit: Commit, path: str) -> Commit:
        """The most recent ancestor commit that changed ``path`` (for ``expand=True`` tree listings)."""
        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if parent.files.get(path) != current.files.get(path):
                return current
            current = parent
        return current


# ----------------------------------------------------------------------------------------------- HTTP


_REPO_API = re.compile(r"^/api/models/(?P<ns>[^/]+)/(?P<name>[^/]+)(?:/(?P<action>[^/]+)(?:/(?P<rest>.*))?)?$")
_REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_RESOLVE = re.compile(r"^/(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


class _Handler(BaseHTTPRequestHandler):
    """Routes answered (model repos only; everything else is a 404 recorded in ``FakeHub.unhandled``):

    - ``GET /api/whoami-v2``; ``GET /api/agent-harnesses`` is a deliberate 404 (client telemetry)
    - ``POST /api/validate-yaml`` (``create_commit`` validates README.md metadata there; always valid)
    - ``POST /api/repos/create``, ``DELETE /api/repos/delete``
    - ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (model info: sha, siblings)
    - ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``; a single page)
    - ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular", with the current blob oid)
    - ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: header, file (base64), deletedFile, deletedFolder)
    - ``POST /api/models/{repo}/branch/{branch}``
    - ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``Range``)
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 30  # an idle keep-alive connection is dropped after this many seconds
    server: _Server

    # -- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake hub: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = self._read_body()
        status = 501
        try:
            status = self._route(method, split.path, body)
        except HubError as err:
            status = err.status
            headers = {**err.headers, "X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send_json(err.status, {"error": err.message}, headers)
        except Exception as err:  # a bug here must reach the test as an HTTP error, not hang the client
            logger.exception("fake hub: error while answering %s %s", method, self.path)
            self._send_json(501, {"error": f"fake hub internal error: {err!r}"})  # 501: the client does not retry
        hub.requests.append((method, self.path, status))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None, head_only: bool = False
    ) -> None:
        self.send_response(status)
        merged = {"Content-Type": "application/json", **(headers or {})}
        merged.setdefault("Content-Length", str(len(body)))
        for key, value in merged.items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _json_body(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"invalid JSON body: {err}") from err

    # -- auth
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None

    def _require_token(self) -> None:
        if self._token() not in self.server.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")

    def _require_write(self, namespace: str) -> None:
        self._require_token()
        if namespace not in self.server.hub.namespaces:
            raise HubError(403, f'You don\'t have the rights to write to the namespace "{namespace}"')

    def _readable_repo(self, repo_id: str) -> Repo:
        repo = self.server.hub.store.repo(repo_id)
        if repo.private and self._token() not in self.server.hub.tokens:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    # -- routing
    def _route(self, method: str, path: str, body: bytes) -> int:
        if method == "GET" and path == "/api/whoami-v2":
            return self._whoami()
        if method == "GET" and path == "/api/agent-harnesses":
            # Best-effort registry the client fetches once a day; a 404 keeps it from caching one in HF_HOME.
            raise HubError(404, "fake hub: no agent harness registry")
        if method == "POST" and path == "/api/validate-yaml":
            self._send_json(200, {"errors": [], "warnings": []})
            return 200
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(self._json_body(body))
        if method == "DELETE" and path == "/api/repos/delete":
            return self._delete_repo(self._json_body(body))
        if match := _REPO_API.match(path):
            return self._repo_api(method, match, body)
        if method in ("GET", "HEAD") and (match := _RESOLVE.match(path)):
            return self._resolve(match)
        self.server.hub.unhandled.append((method, self.path))
        raise HubError(404, f"fake hub: no route for {method} {path}")

    def _repo_api(self, method: str, match: re.Match, body: bytes) -> int:
        ns, name = unquote(match["ns"]), unquote(match["name"])
        repo_id, action, rest = f"{ns}/{name}", match["action"], match["rest"] or ""
        parts = [unquote(p) for p in rest.split("/")] if rest else []
        if method == "GET" and action is None:
            return self._model_info(repo_id, "main")
        if method == "GET" and action == "revision" and len(parts) == 1:
            return self._model_info(repo_id, parts[0])
        if method == "GET" and action == "tree" and parts:
            return self._tree(repo_id, parts[0], "/".join(parts[1:]))
        if method == "POST" and action == "preupload" and len(parts) == 1:
            return self._preupload(repo_id, parts[0], self._json_body(body))
        if method == "POST" and action == "commit" and len(parts) == 1:
            return self._commit(repo_id, parts[0], body)
        if method == "POST" and action == "branch" and len(parts) == 1:
            return self._create_branch(repo_id, parts[0], self._json_body(body))
        self.server.hub.unhandled.append((method, self.path))
        raise HubError(404, f"fake hub: no route for {method} {self.path}")

    # -- endpoints
    def _whoami(self) -> int:
        self._require_token()
        hub = self.server.hub
        self._send_json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": hub.user,
                "fullname": "Fake User",
                "email": f"{hub.user}@localhost",
                "emailVerified": True,
                "isPro": False,
                "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in hub.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
            },
        )
        return 200

    def _create_repo(self, payload: Mapping[str, Any]) -> int:
        hub = self.server.hub
        repo_type = payload.get("type") or "model"
        if repo_type != "model":
            raise HubError(400, f"fake hub: only model repos are supported, not {repo_type!r}")
        namespace = payload.get("organization") or hub.user
        self._require_write(namespace)
        name = str(payload.get("name", ""))
        if not _REPO_NAME.fullmatch(name):  # the Hub's rule; also keeps names from escaping the storage folder
            raise HubError(400, f"Invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{hub.endpoint}/{repo_id}"
        try:
            hub.store.create_repo(repo_id, private)
        except HubError as err:  # already exists: the Hub answers 409 with the url, `exist_ok=True` accepts it
            self._send_json(err.status, {"error": err.message, "url": url}, {"X-Error-Message": err.message})
            return err.status
        self._send_json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})
        return 200

    def _delete_repo(self, payload: Mapping[str, Any]) -> int:
        namespace = payload.get("organization") or self.server.hub.user
        self._require_write(namespace)
        self.server.hub.store.delete_repo(f"{namespace}/{payload['name']}")
        self._send_json(200, {})
        return 200

    def _model_info(self, repo_id: str, revision: str) -> int:
        store = self.server.hub.store
        repo = self._readable_repo(repo_id)
        commit = store.resolve(repo, revision)
        with_blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, oid in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=store.blob_size(oid), blobId=oid)
            siblings.append(sibling)
        ns = repo_id.split("/")[0]
        self._send_json(
            200,
            {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": ns,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(store.blob_size(oid) for oid in commit.files.values()),
            },
        )
        return 200

    def _tree(self, repo_id: str, revision: str, path_in_repo: str) -> int:
        store = self.server.hub.store
        repo = self._readable_repo(repo_id)
        commit = store.resolve(repo, revision)
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        expand = self.query.get("expand", "").lower() in ("1", "true")
        prefix = path_in_repo.strip("/") + "/" if path_in_repo.strip("/") else ""
        under = {p: oid for p, oid in commit.files.items() if p.startswith(prefix)}
        if prefix and not under:
            raise HubError(404, f"Path {path_in_repo} not found in {revision}", "EntryNotFound")
        files: dict[str, str] = {}
        folders: set[str] = set()
        for path, oid in under.items():
            relative = path[len(prefix) :].split("/")
            if recursive or len(relative) == 1:
                files[path] = oid
            # every folder between the prefix and the file (only the first level when not recursive)
            levels = range(1, len(relative)) if recursive else range(1, min(2, len(relative)))
            folders.update(prefix + "/".join(relative[:i]) for i in levels)
        entries: list[dict[str, Any]] = []
        for folder in sorted(folders):
            listing = sorted((p, o) for p, o in under.items() if p.startswith(folder + "/"))
            entries.append(
                {
                    "type": "directory",
                    "oid": hashlib.sha1(json.dumps(listing).encode()).hexdigest(),
                    "size": 0,
                    "path": folder,
                }
            )
        for path, oid in sorted(files.items()):
            entry: dict[str, Any] = {"type": "file", "oid": oid, "size": store.blob_size(oid), "path": path}
            if expand:
                last = store.last_commit_touching(repo, commit, path)
                entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
            entries.append(entry)
        self._send_json(200, entries)
        return 200

    def _preupload(self, repo_id: str, revision: str, payload: Mapping[str, Any]) -> int:
        store = self.server.hub.store
        self._require_write(repo_id.split("/")[0])
        repo = store.repo(repo_id)
        current = store.resolve(repo, revision).files
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": current.get(f["path"])}
            for f in payload.get("files", [])
        ]
        self._send_json(200, {"files": answer, "commitOid": store.resolve(repo, revision).oid})
        return 200

    def _commit(self, repo_id: str, revision: str, body: bytes) -> int:
        hub = self.server.hub
        self._require_write(repo_id.split("/")[0])
        repo = hub.store.repo(repo_id)
        if self.query.get("create_pr"):
            raise HubError(400, "fake hub: create_pr is not supported")
        header: dict[str, Any] = {}
        additions: dict[str, bytes] = {}
        deletions: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = value["content"]
                encoding = value.get("encoding", "utf-8")
                additions[value["path"]] = base64.b64decode(content) if encoding == "base64" else content.encode()
            elif key == "deletedFile":
                deletions.append(value["path"])
            elif key == "deletedFolder":
                deletions.append(value["path"].rstrip("/") + "/")
            else:  # lfsFile, copyFile: never produced, since preupload answers "regular" for everything
                raise HubError(400, f"fake hub: commit operation {key!r} is not supported")
        commit = hub.store.commit(
            repo, revision, additions, deletions, header.get("summary", ""), header.get("parentCommit")
        )
        self._send_json(
            200,
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )
        return 200

    def _create_branch(self, repo_id: str, branch: str, payload: Mapping[str, Any]) -> int:
        store = self.server.hub.store
        self._require_write(repo_id.split("/")[0])
        store.create_branch(store.repo(repo_id), branch, payload.get("startingPoint"))
        self._send_json(200, {})
        return 200

    def _resolve(self, match: re.Match) -> int:
        store = self.server.hub.store
        repo_id = f"{unquote(match['ns'])}/{unquote(match['name'])}"
        revision = unquote(match["rev"])
        path = "/".join(unquote(p) for p in match["path"].split("/"))
        repo = self._readable_repo(repo_id)
        commit = store.resolve(repo, revision)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        oid = commit.files[path]
        content = store.blob(oid)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        status, start, end = 200, 0, len(content)
        if (requested := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d*)-(\d*)", requested.strip())):
            start = int(m[1]) if m[1] else max(0, len(content) - int(m[2] or 0))
            end = int(m[2]) + 1 if m[1] and m[2] else len(content)
            if start >= len(content) and len(content) > 0:
                raise HubError(
                    416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(content)}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{max(start, end - 1)}/{len(content)}"
        self._send(status, content[start:end], headers)
        return status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections from the client's pool must not block shutdown

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self.sockets_lock:
            sockets, self.open_sockets = list(self.open_sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class FakeHub:
    """The server plus what tests inspect: ``store`` (repos), ``requests`` and ``unhandled`` (routes it lacked)."""

    def __init__(
        self,
        root: Path,
        *,
        tokens: Sequence[str] = (FAKE_TOKEN,),
        user: str = FAKE_USER,
        orgs: Sequence[str] = (FAKE_ORG,),
    ) -> None:
        self.store = RepoStore(Path(root))
        self.tokens = frozenset(tokens)
        self.user = user
        self.orgs = tuple(orgs)
        self.namespaces = frozenset((user, *orgs))
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._server = _Server(self)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        logger.debug("fake hub serving %s from %s", self.endpoint, self.store.root)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_open_connections()
        self._server.server_close()
        self._thread.join(timeout=5)
        _close_client_session()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Contents of every file of ``repo_id`` at ``revision``, straight from the store."""
        with self.store.lock:
            commit = self.store.resolve(self.store.repo(repo_id), revision)
            return {path: self.store.blob(oid) for path, oid in commit.files.items()}


class FakeHubEndpoint(str):
    """The endpoint URL (a plain ``str`` for ``HF_ENDPOINT``/``endpoint=``) that also carries its ``hub``."""

    hub: FakeHub

    def __new__(cls, hub: FakeHub) -> Self:
        self = super().__new__(cls, hub.endpoint)
        self.hub = hub
        return self


@contextlib.contextmanager
def fake_hub(tmp_path: str | os.PathLike[str], **hub_kwargs: Any) -> Iterator[FakeHubEndpoint]:
    """Serve a fake Hub on 127.0.0.1 for the duration of the block; yields its endpoint URL.

    Repos live under ``tmp_path/fake_hub``. The server stops (and drops open connections) on exit.
    ``hub_kwargs`` go to :class:`FakeHub` (``tokens``, ``user``, ``orgs``).
    """
    hub = FakeHub(Path(tmp_path) / "fake_hub", **hub_kwargs).start()
    try:
        yield FakeHubEndpoint(hub)
    finally:
        hub.stop()


def _close_client_session() -> None:
    """Drop huggingface_hub's pooled connections, which point at a server that is going away."""
    module = sys.modules.get("huggingface_hub.utils._http")
    if module is not None:
        module.close_session()


# ----------------------------------------------------------------------------------------------- clients


@contextlib.contextmanager
def hub_online(
    endpoint: str, token: str = FAKE_TOKEN, cache_dir: str | os.PathLike[str] | None = None
) -> Iterator[None]:
    """Point this process's ``huggingface_hub`` and ``transformers`` at ``endpoint``, online, then restore.

    ``huggingface_hub.constants`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the cache folder once, at import,
    and builds the download URL template from the endpoint then; ``transformers`` caches one ``HfApi`` (with its
    endpoint) on first use. Setting environment variables after import changes none of them, so patch them all.
    Downloads go to ``cache_dir`` (a temporary folder when not given), never to the user's real Hub cache.
    """
    from huggingface_hub import constants

    try:
        import transformers.utils.hub as transformers_hub
    except ImportError:  # pragma: no cover - transformers is a dependency of the project
        transformers_hub = None
    endpoint = str(endpoint).rstrip("/")
    patched_names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE", "HF_HUB_CACHE")
    saved_constants = {name: getattr(constants, name) for name in patched_names}
    saved_env = {name: os.environ.get(name) for name in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE")}
    saved_api = getattr(transformers_hub, "_hf_api", None)
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fake_hub_cache_"))
        try:
            constants.ENDPOINT = endpoint
            constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
            constants.HF_HUB_OFFLINE = False
            constants.HF_HUB_CACHE = str(cache_dir)
            os.environ.update(HF_ENDPOINT=endpoint, HF_TOKEN=token, HF_HUB_OFFLINE="0")
            if transformers_hub is not None:
                transformers_hub._hf_api = None
            _close_client_session()
            yield
        finally:
            for name, value in saved_constants.items():
                setattr(constants, name, value)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if transformers_hub is not None:
                transformers_hub._hf_api = saved_api
            _close_client_session()


def subprocess_env(endpoint: str, hf_home: str | os.PathLike[str], token: str = FAKE_TOKEN) -> dict[str, str]:
    """Environment for a child process that talks to ``endpoint`` with an empty cache at ``hf_home``."""
    env = {key: value for key, value in os.environ.items() if key not in ("TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    env.update(
        HF_ENDPOINT=str(endpoint),
        HF_TOKEN=token,
        HF_HUB_OFFLINE="0",
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="10",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def state_dict_hash(model: Any) -> str:
    """sha256 over the sorted state dict (names, dtypes, shapes and raw bytes): equal iff the weights are equal."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ReloadResult:
    """What :func:`push_and_reload` saw: the two hashes, the class the fresh process built, the files pushed."""

    repo_id: str
    endpoint: str
    commit_url: str
    local_hash: str
    hub_hash: str
    model_class: str
    model_module: str
    hub_files: list[str]

    @property
    def identical(self) -> bool:
        return self.local_hash == self.hub_hash


def _load_with_auto_class(source: str | os.PathLike[str], auto_class_name: str, trust_remote_code: bool) -> Any:
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    return auto_class.from_pretrained(str(source), trust_remote_code=trust_remote_code)


def push_and_reload(
    checkpoint_dir: str | os.PathLike[str],
    repo_id: str,
    auto_class_name: str = "AutoModel",
    trust_remote_code: bool = False,
    *,
    endpoint: str | None = None,
    hide_packages: Sequence[str] = (),
    timeout: float = 300,
) -> ReloadResult:
    """Push ``checkpoint_dir`` to a fake Hub, reload ``repo_id`` in a fresh interpreter, compare weights.

    The push runs in this process (``create_repo`` + ``upload_folder``). The reload runs in a new Python with
    an empty ``HF_HOME`` and a temporary working directory, so it can only get the model over HTTP; it calls
    ``transformers.<auto_class_name>.from_pretrained(repo_id, trust_remote_code=...)`` and reports the state
    dict hash. ``hide_packages`` are made unimportable there (e.g. ``["hf_genssl"]`` to prove a checkpoint
    loads through its remote code alone). The reference hash comes from loading ``checkpoint_dir`` here with
    the same Auto class. Without ``endpoint`` a fake Hub is started for the call and stopped after it.
    """
    if endpoint is None:
        with tempfile.TemporaryDirectory(prefix="fake_hub_") as tmp, fake_hub(tmp) as started:
            return push_and_reload(
                checkpoint_dir,
                repo_id,
                auto_class_name,
                trust_remote_code,
                endpoint=started,
                hide_packages=hide_packages,
                timeout=timeout,
            )
    from huggingface_hub import HfApi

    checkpoint_dir = Path(checkpoint_dir)
    with hub_online(endpoint):
        api = HfApi(endpoint=str(endpoint), token=FAKE_TOKEN)
        repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
        commit = api.upload_folder(folder_path=checkpoint_dir, repo_id=repo_id, commit_message="push_and_reload")
        hub_files = sorted(api.list_repo_files(repo_id))
        local_hash = state_dict_hash(_load_with_auto_class(checkpoint_dir, auto_class_name, trust_remote_code))
    child = reload_in_fresh_process(
        endpoint, repo_id, auto_class_name, trust_remote_code, hide_packages=hide_packages, timeout=timeout
    )
    return ReloadResult(
        repo_id=repo_id,
        endpoint=str(endpoint),
        commit_url=commit.commit_url,
        local_hash=local_hash,
        hub_hash=child["hash"],
        model_class=child["class"],
        model_module=child["module"],
        hub_files=hub_files,
    )


def reload_in_fresh_process(
    endpoint: str,
    repo_id: str,
    auto_class_name: str = "AutoModel",
    trust_remote_code: bool = False,
    *,
    hide_packages: Sequence[str] = (),
    timeout: float = 300,
) -> dict[str, str]:
    """Load ``repo_id`` from ``endpoint`` in a new interpreter (empty HF_HOME, temporary cwd).

    Returns ``{"hash": state-dict sha256, "class": class name, "module": class module}``.
    """
    with tempfile.TemporaryDirectory(prefix="fresh_process_") as workdir:
        return _run_reload_child(endpoint, repo_id, auto_class_name, trust_remote_code, hide_packages, workdir, timeout)


def _run_reload_child(
    endpoint: str,
    repo_id: str,
    auto_class_name: str,
    trust_remote_code: bool,
    hide_packages: Sequence[str],
    workdir: str,
    timeout: float,
) -> dict[str, str]:
    command = [sys.executable, str(Path(__file__).resolve()), "reload", repo_id, auto_class_name]
    if trust_remote_code:
        command.append("--trust-remote-code")
    for package in hide_packages:
        command += ["--hide", package]
    env = subprocess_env(endpoint, Path(workdir) / "hf_home")
    proc = subprocess.run(command, check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"reloading {repo_id} from {endpoint} in a fresh process failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_main(argv: Sequence[str] | None = None) -> int:
    """Child side of :func:`push_and_reload`: load from the Hub named by ``HF_ENDPOINT``, print a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reload = sub.add_parser("reload")
    reload.add_argument("repo_id")
    reload.add_argument("auto_class_name")
    reload.add_argument("--trust-remote-code", action="store_true")
    reload.add_argument("--hide", action="append", default=[])
    serve = sub.add_parser("serve", help="serve a fake Hub on 127.0.0.1 until interrupted")
    serve.add_argument("--root", help="folder for the repos (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="fake_hub_")))
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    for package in args.hide:
        sys.modules[package] = None  # type: ignore[assignment]  # makes `import package` raise ImportError
    model = _load_with_auto_class(args.repo_id, args.auto_class_name, args.trust_remote_code)
    result = {"hash": state_dict_hash(model), "class": type(model).__name__, "module": type(model).__module__}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _serve(root: Path) -> int:
    """Serve until Ctrl-C / SIGTERM; the first line printed says where and with which credentials."""
    import signal

    hub = FakeHub(root).start()
    print(f"fake Hub at {hub.endpoint} (user {FAKE_USER}, token {FAKE_TOKEN}, repos in {root}); Ctrl-C stops it",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
