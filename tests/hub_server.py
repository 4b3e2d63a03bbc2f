"""A small in-memory Hugging Face Hub for the tests: the part of the Hub API the real clients call.

Standard library only. `huggingface_hub` (create_repo, upload_folder, create_commit, create_branch,
hf_hub_download, snapshot_download, list_repo_tree, HfFileSystem), `transformers` (`from_pretrained`,
`push_to_hub`) and `datasets` (`load_dataset`, `Dataset.push_to_hub`) round-trip through it:

- `POST /api/repos/create` (409 with a `url` when the repo exists), `DELETE /api/repos/delete`
- `GET|HEAD /api/{models|datasets}/{ns}/{name}[/revision/{rev}]`: repo info (id, sha, siblings)
- `POST /api/{type}s/{repo}/preupload/{rev}`: "lfs" for binary files, "regular" for text
- `POST /[datasets/]{repo}.git/info/lfs/objects/batch` (basic transfer), then `PUT /lfs-upload/{oid}`
- `POST /api/{type}s/{repo}/commit/{rev}` (ndjson: header, file, lfsFile, deletedFile, deletedFolder)
- `PUT /api/{type}s/{repo}/settings` (visibility)
- `POST /api/{type}s/{repo}/branch/{branch}`, `GET .../refs`, `GET .../commits/{rev}`
- `GET .../tree/{rev}[/{path}]`, `POST .../paths-info/{rev}`, `POST /api/validate-yaml`,
  `GET /api/whoami-v2`
- `HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}` with `X-Repo-Commit`, `ETag`, `Content-Length`
  and `Range`

Writes need `Authorization: Bearer <token>`. `HubServer.fail(pattern, status)` makes matching requests
fail (to test error handling); every request is recorded in `HubServer.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "test-user"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_BINARY_SUFFIXES = (".safetensors", ".bin", ".parquet", ".arrow", ".png", ".jpg", ".pt", ".npy", ".gz")


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    content: bytes
    lfs_oid: str | None = None  # sha256 of the content when stored through LFS

    @property
    def blob_oid(self) -> str:
        if self.lfs_oid:
            return _git_blob_oid(_lfs_pointer(self.lfs_oid, len(self.content)))
        return _git_blob_oid(self.content)

    @property
    def etag(self) -> str:
        return self.lfs_oid or self.blob_oid


@dataclass
class Commit:
    oid: str
    files: dict[str, StoredFile]
    title: str
    message: str
    parent: str | None
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision)
        if oid is None:
            oid = next((c for c in self.commits if c.startswith(revision) and len(revision) >= 7), None)
        return self.commits.get(oid) if oid else None


class HubState:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.RLock()

    def commit(
        self, repo: Repo, branch: str, files: dict[str, StoredFile], title: str, message: str = ""
    ) -> Commit:
        parent = repo.branches.get(branch)
        digest = hashlib.sha1(f"{repo.repo_id}{branch}{parent}{title}{time.time_ns()}".encode())
        for path in sorted(files):
            digest.update(path.encode() + files[path].etag.encode())
        commit = Commit(digest.hexdigest(), files, title, message, parent)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.raw_path, self.query = split.path, parse_qs(split.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        hub: HubServer = self.server.hub
        hub.requests.append((method, self.raw_path))
        try:
            for pattern, status in list(hub.failures):
                if re.search(pattern, f"{method} {self.raw_path}"):
                    raise _Error(status, f"Injected failure {status} for {method} {self.raw_path}")
            self._route(method)
        except _Error as error:
            self._json({"error": error.message}, status=error.status, code=error.code)
        except Exception as error:  # a bug in the server: answer 500 rather than hang the client
            self._json({"error": f"server error: {error!r}"}, status=500)

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data, status: int = 200, code: str | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if code:
            headers["X-Error-Code"] = code
        if status >= 400:
            headers["X-Error-Message"] = data.get("error", "")
        self._send(status, json.dumps(data).encode(), headers)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.hub.state.token}"

    def _require_auth(self) -> None:
        if not self._authorized():
            raise _Error(401, "Invalid credentials in Authorization header", "Unauthorized")

    def _json_body(self) -> dict:
        return json.loads(self.body or b"{}")

    @property
    def state(self) -> HubState:
        return self.server.hub.state

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authorized()):
            raise _Error(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise _Error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _url(self, repo: Repo) -> str:
        return f"{self.server.hub.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # -- routes -------------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        parts = self.raw_path.strip("/").split("/")
        if parts[:2] == ["api", "whoami-v2"]:
            self._require_auth()
            return self._json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                               "auth": {"type": "access_token", "accessToken": {"role": "write"}}})  # fmt: skip
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if parts[:3] == ["api", "repos", "delete"] and method == "DELETE":
            self._require_auth()
            body = self._json_body()
            name = f"{body.get('organization') or USER}/{body['name']}"
            with self.state.lock:
                self.state.repos.pop((body.get("type") or "model", name), None)
            return self._json({})
        if parts[:2] == ["api", "validate-yaml"]:
            return self._json({"errors": [], "warnings": []})
        if parts[0] == "lfs-upload" and method == "PUT":
            return self._lfs_put(parts[1])
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            return self._api_repo(method, REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:])
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
        if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        raise _Error(404, f"No route for {method} {self.raw_path}")

    def _create_repo(self) -> None:
        self._require_auth()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        private = bool(body.get("private")) or body.get("visibility") == "private"
        with self.state.lock:
            if (repo_type, repo_id) in self.state.repos:
                repo = self.state.repos[(repo_type, repo_id)]
                return self._json(
                    {"error": "You already created this repo", "url": self._url(repo)}, status=409
                )
            repo = Repo(repo_type, repo_id, private)
            self.state.repos[(repo_type, repo_id)] = repo
            attributes = StoredFile(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
            self.state.commit(repo, "main", {".gitattributes": attributes}, "initial commit")
        self._json({"url": self._url(repo), "name": repo_id, "id": repo_id})

    def _api_repo(self, method: str, repo_type: str, repo_id: str, rest: list[str]) -> None:
        with self.state.lock:
            repo = self._repo(repo_type, repo_id)
        action = rest[0] if rest else None
        if action is None or action == "revision":
            commit = self._commit(repo, rest[1] if rest else "main")
            return self._json(self._info(repo, commit))
        if action == "preupload":
            self._require_auth()
            files = self._json_body()["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": self._upload_mode(f), "shouldIgnore": False,
                                          "oid": None} for f in files], "commitOid": repo.branches.get("main")})  # fmt: skip
        if action == "commit" and method == "POST":
            self._require_auth()
            return self._commit_files(repo, unquote(rest[1]))
        if action == "settings" and method == "PUT":
            self._require_auth()
            body = self._json_body()
            if "private" in body or "visibility" in body:
                repo.private = bool(body.get("private")) or body.get("visibility") == "private"
            return self._json({})
        if action == "branch" and method == "POST":
            self._require_auth()
            return self._create_branch(repo, unquote("/".join(rest[1:])))
        if action == "refs":
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in repo.branches.items()
            ]
            return self._json({"branches": branches, "tags": [], "converts": []})
        if action == "commits":
            commit, history = self._commit(repo, rest[1]), []
            while commit is not None:
                history.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                                "authors": [{"user": USER}], "date": commit.date})  # fmt: skip
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return self._json(history)
        if action == "tree":
            commit = self._commit(repo, rest[1])
            return self._tree(commit, "/".join(unquote(p) for p in rest[2:]), self._flag("recursive"))
        if action == "paths-info" and method == "POST":
            commit = self._commit(repo, rest[1])
            form = parse_qs(self.body.decode())
            paths = form.get("paths", [])
            if not paths and self.body.startswith(b"{"):
                paths = self._json_body().get("paths", [])
            entries = [e for p in paths for e in self._entries(commit, p.strip("/"), exact=True)]
            return self._json(entries)
        raise _Error(404, f"No route for {method} {self.raw_path}")

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    @staticmethod
    def _upload_mode(file: dict) -> str:
        sample = base64.b64decode(file.get("sample", ""))
        if file["path"].endswith(_BINARY_SUFFIXES) or b"\0" in sample:
            return "lfs"
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError:
            return "lfs"
        return "regular"

    def _info(self, repo: Repo, commit: Commit) -> dict:
        info = {"id": repo.repo_id, "_id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": commit.oid, "private": repo.private, "disabled": False, "gated": False,
                "lastModified": commit.date, "createdAt": commit.date, "tags": [], "downloads": 0, "likes": 0,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)]}  # fmt: skip
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return info

    def _create_branch(self, repo: Repo, branch: str) -> None:
        with self.state.lock:
            if branch in repo.branches:
                raise _Error(409, f"Branch {branch} already exists")
            start = self._json_body().get("startingPoint") or "main"
            repo.branches[branch] = self._commit(repo, start).oid
        self._json({})

    def _commit_files(self, repo: Repo, branch: str) -> None:
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with self.state.lock:
            if branch not in repo.branches:
                raise _Error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            files = dict(repo.commits[repo.branches[branch]].files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    if value["oid"] not in self.state.lfs:
                        raise _Error(422, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = StoredFile(self.state.lfs[value["oid"]], lfs_oid=value["oid"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            commit = self.state.commit(
                repo, branch, files, header.get("summary", ""), header.get("description", "")
            )
        self._json({"commitUrl": f"{self._url(repo)}/commit/{commit.oid}", "commitOid": commit.oid,
                    "success": True, "pullRequestUrl": None})  # fmt: skip

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_auth()
        with self.state.lock:
            self._repo(repo_type, repo_id)
        objects = []
        for obj in self._json_body()["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                href = f"{self.server.hub.endpoint}/lfs-upload/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")  # fmt: skip

    def _lfs_put(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise _Error(400, f"Content does not match its sha256 {oid}")
        with self.state.lock:
            self.state.lfs[oid] = self.body
        self._send(200, b"")

    def _entries(self, commit: Commit, path: str, exact: bool = False, recursive: bool = False) -> list[dict]:
        """Tree entries at `path` (exact: the entry itself; else: its children)."""
        if exact:
            if path in commit.files:
                return [self._file_entry(path, commit.files[path])]
            if any(p.startswith(path + "/") for p in commit.files):
                return [{"type": "directory", "oid": _git_blob_oid(path.encode()), "size": 0, "path": path}]
            return []
        prefix = f"{path}/" if path else ""
        entries, folders = [], set()
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest:
                parts = rest.split("/")
                for depth in range(1, len(parts) if recursive else 2):
                    folders.add(prefix + "/".join(parts[:depth]))
                if not recursive:
                    continue
            entries.append(self._file_entry(name, commit.files[name]))
        directories = [
            {"type": "directory", "oid": _git_blob_oid(f.encode()), "size": 0, "path": f}
            for f in sorted(folders)
        ]
        return directories + entries

    @staticmethod
    def _file_entry(path: str, stored: StoredFile) -> dict:
        entry = {"type": "file", "oid": stored.blob_oid, "size": len(stored.content), "path": path}
        if stored.lfs_oid:
            pointer = _lfs_pointer(stored.lfs_oid, len(stored.content))
            entry["lfs"] = {"oid": stored.lfs_oid, "size": len(stored.content), "pointerSize": len(pointer)}
        return entry

    def _tree(self, commit: Commit, path: str, recursive: bool) -> None:
        path = path.strip("/")
        if path and not self._entries(commit, path, exact=True):
            raise _Error(404, f"Entry not found: {path}", "EntryNotFound")
        self._json(self._entries(commit, path, recursive=recursive))

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.state.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit(repo, revision)
        stored = commit.files.get(unquote(path))
        if stored is None:
            raise _Error(404, f"Entry not found: {path}", "EntryNotFound")
        content, status = stored.content, 200
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"', "Accept-Ranges": "bytes"}
        if stored.lfs_oid:
            headers["X-Linked-Etag"], headers["X-Linked-Size"] = f'"{stored.lfs_oid}"', str(len(content))
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and content:
            start = int(match[1]) if match[1] else max(0, len(content) - int(match[2]))
            end = int(match[2]) if match[1] and match[2] else len(content) - 1
            end = min(end, len(content) - 1)
            if start >= len(content):
                headers["Content-Range"] = f"bytes */{len(content)}"
                return self._send(416, b"", headers, content_type="application/octet-stream")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, headers, content_type="application/octet-stream")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer


class HubServer:
    """A local Hub on `127.0.0.1` (a free port). Use as a context manager, or `start()` / `stop()`.

    Args:
        token: The only token that may write (sent as `Authorization: Bearer <token>`).
    """

    def __init__(self, token: str = "hf_test_token"):
        self.state = HubState(token)
        self.failures: list[tuple[str, int]] = []
        self.requests: list[tuple[str, str]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return self._server.server_address[0]

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail(self, pattern: str, status: int) -> None:
        """Answer `status` to every request whose `"METHOD /path"` matches the regex `pattern`."""
        self.failures.append((pattern, status))

    def clear_failures(self) -> None:
        self.failures.clear()

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Content of every file of a repo at `revision` (for assertions)."""
        repo = self.state.repos[(repo_type, repo_id)]
        return {path: f.content for path, f in repo.resolve(revision).files.items()}

    def num_commits(self, repo_id: str, repo_type: str = "model") -> int:
        return len(self.state.repos[(repo_type, repo_id)].commits)


# ----- pytest fixture: a started server, with the client libraries pointed at it -----

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class RealHubGuard:
    """Refuses every name lookup and connection that is not to the loopback interface.

    A client constant that still points at huggingface.co then fails at once (and is recorded in
    `blocked`) instead of reaching the real Hub or waiting on DNS.
    """

    def __init__(self):
        self.blocked: list[str] = []

    def install(self, monkeypatch) -> None:
        import socket

        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

        def getaddrinfo(host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name not in _LOOPBACK:
                self.blocked.append(name)
                raise socket.gaierror(
                    socket.EAI_NONAME, f"test guard: no lookup of {name!r} (only the local Hub)"
                )
            return real_getaddrinfo(host, *args, **kwargs)

        def connect(sock, address):
            host = address[0] if isinstance(address, tuple) else None
            if host is not None and host not in _LOOPBACK:
                self.blocked.append(str(host))
                raise ConnectionRefusedError(f"test guard: no connection to {host!r} (only the local Hub)")
            return real_connect(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", connect)


def point_clients_at(monkeypatch, endpoint: str, token: str, home) -> None:
    """Point huggingface_hub, transformers and datasets at `endpoint`, with `token` and a cache under `home`.

    The libraries read `HF_ENDPOINT`, `HF_HOME` and `HF_HUB_DISABLE_XET` at import time, so the derived
    module constants are patched as well as the environment (for subprocesses).
    """
    from pathlib import Path

    import datasets.config
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.hf_api

    home = Path(home)
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": token, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_CACHE": str(home / "hub"),
           "HF_DATASETS_CACHE": str(home / "datasets")}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    host = urlsplit(endpoint).hostname
    for name, value in {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": hub_constants.HF_URL_HOSTS | {host},
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }.items():
        if hasattr(hub_constants, name):
            monkeypatch.setattr(hub_constants, name, value)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    for name, value in {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_DATASETS_CACHE": home / "datasets",
        "HF_CACHE_HOME": str(home),
        "HF_UPDATE_DOWNLOAD_COUNTS": False,  # a HEAD to a legacy S3 bucket on every load_dataset
    }.items():
        monkeypatch.setattr(datasets.config, name, value)
    import transformers.utils.hub as transformers_hub

    for name in (
        "HF_HUB_CACHE",
        "TRANSFORMERS_CACHE",
        "PYTORCH_PRETRAINED_BERT_CACHE",
        "PYTORCH_TRANSFORMERS_CACHE",
    ):
        if hasattr(transformers_hub, name):
            monkeypatch.setattr(transformers_hub, name, str(home / "hub"))
    if hasattr(transformers_hub, "_hf_api"):
        # transformers keeps one HfApi, built with the endpoint of its first use.
        monkeypatch.setattr(transformers_hub, "_hf_api", None)


def serve_local_hub(monkeypatch, home):
    """Generator behind the tests' `hub` fixture: a running local Hub that the client libraries point at,
    with every other host refused. Yields the `HubServer`; asserts at the end that nothing tried to leave.

    Example:

    ```python
    @pytest.fixture
    def hub(monkeypatch, tmp_path_factory):
        yield from serve_local_hub(monkeypatch, tmp_path_factory.mktemp("hf_home"))
    ```
    """
    import huggingface_hub.constants as hub_constants

    guard = RealHubGuard()
    guard.install(monkeypatch)
    with HubServer() as server:
        point_clients_at(monkeypatch, server.endpoint, server.state.token, home)
        assert hub_constants.ENDPOINT == server.endpoint
        assert hub_constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith(server.endpoint + "/")
        server.guard = guard
        yield server
    # datasets derives its viewer API from the endpoint ("datasets-server.<host>"); that name cannot
    # resolve, and the guard refuses it like any other.
    leaks = [name for name in guard.blocked if not name.startswith(f"datasets-server.{server.host}")]
    assert not leaks, f"requests tried to leave the machine: {leaks}"
