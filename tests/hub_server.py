"""A small fake Hugging Face Hub for tests: a threaded HTTP server on 127.0.0.1.

It implements the endpoints that ``huggingface_hub`` (checked against 2.4) calls to
download files into its cache and to publish a commit, so tests run the library's
real code paths with no internet:

read
    ``GET  /api/models/{repo}[/revision/{rev}]``      model info, ``?blobs=1`` adds file metadata
    ``GET  /api/models/{repo}/tree/{rev}[/{path}]``   file listing (``snapshot_download``)
    ``HEAD|GET /{repo}/resolve/{rev}/{path}``         a file: regular files answer 200 with ``ETag``
                                                      (git blob sha1), ``X-Repo-Commit`` and
                                                      ``Content-Length``; LFS files answer 302 to a
                                                      "CDN" with ``X-Linked-Etag`` (sha256) and
                                                      ``X-Linked-Size``, like the real Hub
    ``GET /cdn/{sha256}``                              LFS content, served under the host name
                                                      ``localhost`` so the client treats it as
                                                      another origin (no auth header is sent)
write
    ``POST /api/repos/create``                         create a repo (409 when it exists)
    ``POST /api/validate-yaml``                        model card metadata check
    ``POST /api/models/{repo}/preupload/{rev}``        upload mode per file (``lfs`` for weights)
    ``POST /{repo}.git/info/lfs/objects/batch``       LFS batch API, basic transfer
    ``PUT  /lfs/upload/{oid}``, ``POST /lfs/verify/{oid}``
    ``POST /api/models/{repo}/commit/{branch}``        NDJSON commit payload
    ``POST /api/models/{repo}/branch/{name}``          create a branch

Errors carry the ``X-Error-Code`` header the client maps to its exceptions
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``, ``GatedRepo``).
Xet storage is never advertised (no ``X-Xet-Hash`` header), so downloads use plain
HTTP; uploads need ``HF_HUB_DISABLE_XET=1`` on the client, since the client would
otherwise try Xet whenever ``hf_xet`` is installed.

Test hooks: :meth:`FakeHub.add_commit` seeds a repo directly, :meth:`FakeHub.corrupt`
makes a file's download differ from its advertised hash or size, and
:attr:`FakeHub.requests` records every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack", ".onnx")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n"
        ).encode()

    @property
    def git_oid(self) -> str:
        return git_blob_sha1(self.pointer if self.lfs else self.content)

    @property
    def etag(self) -> str:
        """What the Hub sends as (linked) ETag: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, Blob]
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    gated: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision)
        if sha is None and revision in self.commits:
            sha = revision
        if sha is None and len(revision) >= 7:
            matches = [c for c in self.commits if c.startswith(revision.lower())]
            sha = matches[0] if len(matches) == 1 else None
        return self.commits.get(sha) if sha else None


class FakeHub:
    """The server's state plus its lifecycle: ``with FakeHub() as hub: hub.url``."""

    def __init__(self, tokens: dict[str, str] | None = None):
        # token -> user name; a user may write to repos in its own namespace
        self.tokens = dict(tokens or {"hf_test_write_token": "alice"})
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.corruptions: dict[str, str] = {}  # sha256 of the true content -> "flip" | "truncate"
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://localhost:{self.port}"

    # -- test hooks ------------------------------------------------------------------------
    def create_repo(self, repo_id: str, private: bool = False, gated: bool = False) -> Repo:
        with self.lock:
            if repo_id not in self.repos:
                repo = Repo(repo_id, private=private, gated=gated)
                self.repos[repo_id] = repo
                attributes = Blob(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", lfs=False)
                self._new_commit(repo, "main", {".gitattributes": attributes}, "initial commit", replace=True)
            return self.repos[repo_id]

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        branch: str = "main",
        message: str = "update",
        private: bool = False,
        gated: bool = False,
    ) -> str:
        """Commit ``files`` (path -> content) on ``branch``, creating the repo if needed; returns the sha."""
        with self.lock:
            repo = self.create_repo(repo_id, private=private, gated=gated)
            blobs = {p: Blob(c, lfs=p.endswith(LFS_SUFFIXES)) for p, c in files.items()}
            return self._new_commit(repo, branch, blobs, message).sha

    def corrupt(self, repo_id: str, path: str, mode: str = "flip", revision: str = "main") -> None:
        """Make downloads of a file wrong: ``flip`` changes bytes (same size, stale ETag), ``truncate``
        sends half of it (the metadata still announces the full size)."""
        assert mode in ("flip", "truncate")
        with self.lock:
            blob = self.repos[repo_id].resolve(revision).files[path]
            self.corruptions[blob.sha256] = mode

    def resolve_count(self, repo_id: str, method: str | None = None) -> int:
        prefix = f"/{repo_id}/resolve/"
        return sum(1 for m, p in self.requests if p.startswith(prefix) and (method is None or m == method))

    def content_requests(self) -> int:
        """GET requests that transferred file content (regular files and the LFS "CDN")."""
        return sum(1 for m, p in self.requests if m == "GET" and ("/resolve/" in p or p.startswith("/cdn/")))

    # -- internals -------------------------------------------------------------------------
    def _new_commit(self, repo: Repo, branch: str, blobs: dict[str, Blob], message: str,
                    replace: bool = False) -> Commit:
        parent_sha = repo.branches.get(branch) if not replace else None
        if parent_sha is None and branch != "main" and "main" in repo.branches and not replace:
            parent_sha = repo.branches["main"]
        files = dict(repo.commits[parent_sha].files) if parent_sha else {}
        files.update(blobs)
        self._counter += 1
        digest = hashlib.sha1(
            json.dumps([parent_sha, sorted((p, b.git_oid) for p, b in files.items()), message, self._counter]).encode()
        ).hexdigest()
        commit = Commit(digest, parent_sha, files, message, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
        repo.commits[digest] = commit
        repo.branches[branch] = digest
        return commit


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # -- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_length: int | None = None) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        h = {"X-Error-Message": message, **(headers or {})}
        if code:
            h["X-Error-Code"] = code
        self._json(status, {"error": message}, h)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return self.hub.tokens.get(auth[7:].strip())
        return None

    def _bad_token(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.lower().startswith("bearer ") and self._user() is None

    def _repo_for_read(self, repo_id: str) -> Repo | None:
        """The repo, or None after answering with the error the Hub would give."""
        if self._bad_token():
            self._error(401, None, "Invalid credentials in Authorization header")
            return None
        repo = self.hub.repos.get(repo_id)
        user = self._user()
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            self._error(404 if user else 401, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _commit_for(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        return commit

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        with self.hub.lock:
            self.hub.requests.append((self.command, split.path))
        query = parse_qs(split.query)
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        method = self.command
        try:
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = f"{parts[2]}/{parts[3]}"
                rest = parts[4:]
                if method == "GET" and not rest:
                    return self._model_info(repo_id, "main", "blobs" in query)
                if method == "GET" and rest[0] == "revision" and len(rest) == 2:
                    return self._model_info(repo_id, rest[1], "blobs" in query)
                if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]))
                if method == "POST" and rest[0] == "preupload" and len(rest) == 2:
                    return self._preupload(repo_id, rest[1])
                if method == "POST" and rest[0] == "commit" and len(rest) == 2:
                    return self._commit(repo_id, rest[1])
                if method == "POST" and rest[0] == "branch" and len(rest) >= 2:
                    return self._branch(repo_id, "/".join(rest[1:]))
            if parts[:3] == ["api", "repos", "create"] and method == "POST":
                return self._create_repo()
            if parts[:2] == ["api", "validate-yaml"] and method == "POST":
                return self._validate_yaml()
            if parts[:2] == ["api", "agent-harnesses"]:
                return self._json(200, {"standardEnvVars": [], "harnesses": {}})
            if parts[:1] == ["cdn"] and len(parts) == 2 and method == "GET":
                return self._cdn(parts[1])
            if parts[:2] == ["lfs", "upload"] and method == "PUT":
                return self._lfs_upload(parts[2])
            if parts[:2] == ["lfs", "verify"] and method == "POST":
                return self._lfs_verify(parts[2])
            if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}")
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            self._error(404, None, f"no route for {method} {split.path}")
        except Exception as exc:  # a bug in the fake server must show up, not hang the client
            self._error(500, None, f"fake hub error: {exc!r}")

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # -- read endpoints --------------------------------------------------------------------
    def _read_commit(self, repo_id: str, revision: str):
        """(repo, commit) for a read request, or None once the error response is sent."""
        repo = self._repo_for_read(repo_id)
        commit = self._commit_for(repo, revision) if repo is not None else None
        return None if commit is None else (repo, commit)

    def _model_info(self, repo_id: str, revision: str, blobs: bool) -> None:
        found = self._read_commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        siblings = []
        for path, blob in sorted(commit.files.items()):
            entry = {"rfilename": path}
            if blobs:
                entry.update(size=len(blob.content), blobId=blob.git_oid)
                if blob.lfs:
                    entry["lfs"] = {"size": len(blob.content), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(entry)
        self._json(200, {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit.sha, "lastModified": commit.date, "createdAt": commit.date,
            "private": repo.private, "gated": "auto" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })

    def _tree(self, repo_id: str, revision: str, prefix: str) -> None:
        found = self._read_commit(repo_id, revision)
        if found is None:
            return
        _, commit = found
        out = []
        for path, blob in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            entry = {"type": "file", "oid": blob.git_oid, "size": len(blob.content), "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.content), "pointerSize": len(blob.pointer)}
            out.append(entry)
        self._json(200, out)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo_for_read(repo_id)
        if repo is None:
            return
        if repo.gated and self._user() is None:
            self._error(401, "GatedRepo", "Access to model is restricted. You must be authenticated to access it.")
            return
        commit = self._commit_for(repo, revision)
        if commit is None:
            return
        blob = commit.files.get(path)
        if blob is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}",
                        {"X-Repo-Commit": commit.sha})
            return
        common = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if blob.lfs:
            location = f"{self.hub.cdn_url}/cdn/{blob.sha256}"
            self._send(302, b"", {**common, "Location": location, "X-Linked-Etag": f'"{blob.sha256}"',
                                  "X-Linked-Size": str(len(blob.content)), "ETag": f'"{blob.git_oid}"',
                                  "Content-Type": "text/plain"})
            return
        self._serve_content(blob, {**common, "ETag": f'"{blob.git_oid}"'})

    def _cdn(self, sha256: str) -> None:
        with self.hub.lock:
            blob = next((b for r in self.hub.repos.values() for c in r.commits.values() for b in c.files.values()
                         if b.sha256 == sha256), None)
        if blob is None:
            return self._error(404, None, "no such object")
        self._serve_content(blob, {"ETag": f'"{sha256}"'})

    def _serve_content(self, blob: Blob, headers: dict[str, str]) -> None:
        headers = {**headers, "Content-Type": "application/octet-stream"}
        if self.command == "HEAD":
            return self._send(200, b"", headers, content_length=len(blob.content))
        data = blob.content
        mode = self.hub.corruptions.get(blob.sha256)
        if mode == "flip":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        elif mode == "truncate":
            data = data[: len(data) // 2]
        self._send(200, data, headers)

    # -- write endpoints -------------------------------------------------------------------
    def _writer(self, repo_id: str) -> str | None:
        user = self._user()
        if user is None:
            self._error(401, None, "Invalid credentials in Authorization header" if self._bad_token()
                        else "You must be authenticated to write")
            return None
        if repo_id.split("/")[0] != user:
            self._error(403, None, f"You don't have the rights to write to {repo_id}")
            return None
        return user

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        user = self._user()
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if self._writer(repo_id) is None:
            return
        private = payload.get("private") or payload.get("visibility") == "private"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                # like the Hub, a 409 still carries the repo URL (create_repo(exist_ok=True) reads it)
                return self._json(409, {"error": "You already created this model repo",
                                        "url": f"{self.hub.url}/{repo_id}"},
                                  {"X-Error-Message": "You already created this model repo"})
            self.hub.create_repo(repo_id, private=bool(private))
        self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        payload = json.loads(self._body() or b"{}")
        text = payload.get("content", "")
        errors = []
        if text.startswith("---"):
            block = text.split("---", 2)[1] if text.count("---") >= 2 else ""
            try:
                data = yaml.safe_load(block)
                if data is not None and not isinstance(data, dict):
                    errors.append({"message": "metadata must be a mapping"})
            except yaml.YAMLError as exc:
                errors.append({"message": f"invalid YAML: {exc}"})
        if errors:
            return self._json(400, {"errors": errors, "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str, revision: str) -> None:
        payload = json.loads(self._body() or b"{}")
        if self._writer(repo_id) is None:
            return
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        commit = repo.resolve(revision)
        files = []
        for f in payload.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = f["path"].endswith(LFS_SUFFIXES) or f.get("size", 0) > 10_000_000 or b"\0" in sample
            existing = commit.files.get(f["path"]) if commit else None
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else existing.git_oid
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.sha if commit else None})

    def _lfs_batch(self, repo_id: str) -> None:
        payload = json.loads(self._body() or b"{}")
        if self._writer(repo_id) is None:
            return
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_store:
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs/upload/{oid}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/lfs/verify/{oid}", "header": {}},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, None, "sha256 of the uploaded content does not match the oid")
        with self.hub.lock:
            self.hub.lfs_store[oid] = data
        self._send(200, b"")

    def _lfs_verify(self, oid: str) -> None:
        payload = json.loads(self._body() or b"{}")
        data = self.hub.lfs_store.get(oid)
        if data is None or len(data) != payload.get("size"):
            return self._error(404, None, "object not uploaded")
        self._json(200, {"message": "ok"})

    def _branch(self, repo_id: str, branch: str) -> None:
        payload = json.loads(self._body() or b"{}")
        if self._writer(repo_id) is None:
            return
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        with self.hub.lock:
            if branch in repo.branches:
                return self._error(409, None, f"Reference refs/heads/{branch} already exists")
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            repo.branches[branch] = start.sha
        self._json(200, {})

    def _commit(self, repo_id: str, revision: str) -> None:
        body = self._body()
        if self._writer(repo_id) is None:
            return
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if revision not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        header, blobs = {}, {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                blobs[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.hub.lfs_store.get(value["oid"])
                if data is None:
                    return self._error(400, None, f"LFS object {value['oid']} was not uploaded")
                blobs[value["path"]] = Blob(data, lfs=True)
            else:
                return self._error(400, None, f"unknown commit operation {key}")
        with self.hub.lock:
            parent = header.get("parentCommit")
            if parent and parent != repo.branches[revision]:
                return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            commit = self.hub._new_commit(repo, revision, blobs, header.get("summary", ""))
        self._json(200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.sha}", "commitOid": commit.sha,
                         "success": True, "pullRequestUrl": None})
