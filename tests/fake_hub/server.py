"""A fake Hugging Face Hub on 127.0.0.1 for the real ``huggingface_hub`` client (``endpoint=``, HF_ENDPOINT).

Why a server and not mocks: what we must get right lives in the client's HTTP code (which errors it
raises for which answer, when it falls back to its cache, when it drops the token, what it sends at
all on a second run), and only real HTTP exercises that.

Wire facts this server follows (from huggingface_hub 2.4's source: ``hf_api.py`` ``model_info`` and
``list_repo_tree``, ``file_download.py`` ``get_hf_file_metadata``/``http_get``, ``utils/_http.py``
``hf_raise_for_status``; and the Hub's answers quoted in public bug reports):

* ``GET /api/models/<repo>[/revision/<rev>]``: JSON with ``id``, ``sha`` (the commit), ``siblings``
  (``{"rfilename"}``), ``gated`` (``"manual"`` or false), ``private``. Readable for a gated repo
  without access: only file contents are gated.
* ``GET /api/models/<repo>/tree/<rev>[/<path>]?recursive=..&expand=..``: a JSON list of
  ``{"type": "file", "oid", "size", "path"[, "lfs": {"oid", "size", "pointerSize"}]}`` and
  ``{"type": "directory", "oid", "path"}``; at most ``page_size`` entries, the next page's URL in a
  ``Link: <url>; rel="next"`` header (a ``cursor`` parameter, as the Hub's).
* ``HEAD``/``GET /<repo>/resolve/<rev>/<path>``: ``X-Repo-Commit``, ``ETag`` (the git blob id, quoted)
  and ``Content-Length``; ``Range: bytes=N-`` answered 206. An LFS file is a 302 to a signed URL on
  another origin (``localhost`` instead of ``127.0.0.1``, as a CDN is) with ``X-Linked-Etag`` (its
  sha256) and ``X-Linked-Size``; the client must not send its token there (``cdn_authorizations``).
* ``GET /api/models/<repo>/auth-check``: 200, or the gated/not-found errors below.
* ``GET /api/agent-harnesses``: an empty registry. The client fetches it from its default endpoint
  (HF_ENDPOINT, not ``endpoint=``) once a day unless telemetry is off, to build its User-Agent.
* Errors carry ``X-Error-Code``/``X-Error-Message`` headers and ``{"error": message}``:
  a token the Hub does not know: 401, message ``Invalid credentials in Authorization header`` (no code),
  on every route; a missing (or private, unreadable) repo: ``RepoNotFound``, 401 without a token, 404
  with one; ``RevisionNotFound`` 404; ``EntryNotFound`` 404 (with ``X-Repo-Commit``); a gated repo's
  files: ``GatedRepo``, 401 without a token, 403 with one that was not granted.

Every request is recorded (``requests``) so a test can assert that a second run asked nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import tempfile
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.fake_hub.repos import LFS_POINTER_SIZE, Commit, Repo, RepoFileEntry, files_of_folder, new_repo
from tests.support.loopback import TrackedHandler, TrackedServer

INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
Parts = dict[str, str]  # a route's decoded path parts: repo, rev, sub, file
Query = Mapping[str, str]
_REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"
CHUNK = 1 << 16


@dataclass(frozen=True)
class HubRequest:
    """One request as the fake saw it: what a test counts and inspects."""

    method: str
    path: str  # decoded, without the query
    route: str  # "info" | "tree" | "auth-check" | "resolve" | "cdn" | "unknown"
    token: str | None  # the bearer token sent, if any
    status: int


@dataclass
class _Reply:
    status: int = 200
    headers: dict[str, str] | None = None
    body: bytes = b""
    file: RepoFileEntry | None = None  # stream this file (whole, or from ``offset``)
    offset: int = 0


class _HubError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


class FakeHub:
    """The Hub's download API on ``127.0.0.1:<free port>``; use as a context manager or start()/stop()."""

    def __init__(self, root: Path | None = None, *, page_size: int = 1000) -> None:
        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="fake-hub-")
        self.root = Path(root or self._tmp.name)  # type: ignore[union-attr]
        self.page_size = page_size  # tree entries per page (the Hub: 1000)
        self.token = f"hf_fake_{secrets.token_hex(12)}"  # valid, granted every gated repo it is given
        self.tokens: set[str] = {self.token}
        self.repos: dict[str, Repo] = {}
        self.requests: list[HubRequest] = []
        self.cdn_authorizations: list[str | None] = []  # Authorization header of every CDN request
        self.bugs: list[str] = []  # tracebacks of the fake's own crashes (answered 500)
        self._signing_key = secrets.token_bytes(16)
        self._lock = threading.RLock()
        self._server: TrackedServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""
        self.cdn_base = ""
        models = rf"/api/models/{_REPO}"
        self._routes: list[tuple[tuple[str, ...], str, str, Any]] = [
            (("GET",), "info", rf"{models}/revision/(?P<rev>[^/]+)", self._info),
            (("GET",), "tree", rf"{models}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.+))?", self._tree),
            (("GET",), "auth-check", rf"{models}/auth-check", self._auth_check),
            (("GET",), "info", models, self._info),
            (("GET", "HEAD"), "resolve", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            (("GET",), "telemetry", r"/api/agent-harnesses", self._agent_harnesses),
        ]

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        if self._server is None:
            server = TrackedServer(("127.0.0.1", 0), _Handler)
            server.fake = self  # type: ignore[attr-defined]
            self._server = server
            port = server.server_address[1]
            self.endpoint = f"http://127.0.0.1:{port}"
            self.cdn_base = f"http://localhost:{port}"  # another origin: the client drops its token
            self._thread = server.serve("fake-hub")
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            if self._thread is not None:
                self._thread.join(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state a test sets up ----------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | Path,
        *,
        gated: bool = False,
        private: bool = False,
        readers: tuple[str, ...] | None = None,
        branch: str = "main",
    ) -> str:
        """Create ``repo_id`` with one commit on ``branch``; returns the commit id. ``files`` is a
        folder or path -> bytes. A gated or private repo is readable by ``readers`` (default: ``token``)."""
        with self._lock:
            repo = new_repo(self.root, repo_id, private=private, gated=gated)
            repo.readers = set(readers if readers is not None else (self.token,))
            self.repos[repo_id] = repo
            changes = files_of_folder(files) if isinstance(files, Path) else dict(files)
            return repo.commit(changes, branch=branch, message="initial commit")

    def commit(
        self,
        repo_id: str,
        changes: Mapping[str, bytes | None],
        *,
        branch: str = "main",
        message: str = "update",
    ) -> str:
        """A new commit on ``branch`` (path -> bytes, None deletes); returns its id."""
        with self._lock:
            return self.repos[repo_id].commit(changes, branch=branch, message=message)

    def tag(self, repo_id: str, name: str, revision: str) -> None:
        with self._lock:
            repo = self.repos[repo_id]
            commit = repo.resolve(revision)
            assert commit is not None, revision
            repo.tags[name] = commit.sha

    def new_token(self) -> str:
        """Another valid token (an account that was granted nothing)."""
        token = f"hf_fake_{secrets.token_hex(12)}"
        with self._lock:
            self.tokens.add(token)
        return token

    def count(self, *, method: str | None = None, route: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and (route is None or r.route == route)
            )

    def downloads(self) -> list[str]:
        """Paths of the file bodies served (GET resolve answered 200/206, and CDN GETs), in order."""
        with self._lock:
            return [
                r.path
                for r in self.requests
                if r.method == "GET" and r.route in ("resolve", "cdn") and r.status in (200, 206)
            ]

    # --- answering ---------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str]) -> tuple[str, _Reply]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        auth = headers.get("authorization") or ""
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else (auth or None)
        route, reply = "unknown", _Reply(404, body=b"Not Found")
        try:
            with self._lock:
                if (m := re.fullmatch(r"/_cdn/(?P<sha>[0-9a-f]{64})", split.path)) is not None:
                    route = "cdn"
                    self.cdn_authorizations.append(headers.get("authorization"))
                    reply = self._cdn(m["sha"], query, headers)
                elif token is not None and token not in self.tokens:
                    route = self._route_of(split.path)
                    raise _HubError(401, INVALID_CREDENTIALS)
                else:
                    for methods, name, pattern, answer in self._routes:
                        if method in methods and (m := re.fullmatch(pattern, split.path)) is not None:
                            route = name
                            parts = {k: unquote(v or "") for k, v in m.groupdict().items()}
                            reply = answer(parts, query, token, headers)
                            break
        except _HubError as exc:
            extra = {"X-Error-Message": exc.message, **exc.headers}
            if exc.code:
                extra["X-Error-Code"] = exc.code
            reply = _json({"error": exc.message}, exc.status, extra)
        except Exception:
            self.bugs.append(traceback.format_exc())
            reply = _Reply(500, body=b"fake hub bug")
        with self._lock:
            self.requests.append(HubRequest(method, unquote(split.path), route, token, reply.status))
        return route, reply

    @staticmethod
    def _route_of(path: str) -> str:
        for route, pattern in (("tree", "/tree/"), ("auth-check", "/auth-check"), ("resolve", "/resolve/")):
            if pattern in path:
                return route
        return "info" if path.startswith("/api/models/") else "unknown"

    def _readable(self, repo_id: str, token: str | None, *, files: bool) -> Repo:
        """The repo if ``token`` may see it (with ``files``: download its files), else the Hub's error."""
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.readers):
            raise _HubError(401 if token is None else 404, "Repository not found", "RepoNotFound")
        if files and repo.gated and token not in repo.readers:
            if token is None:
                message = (
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in."
                )
                raise _HubError(401, message, "GatedRepo")
            message = (
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.endpoint}/{repo_id} to ask for access."
            )
            raise _HubError(403, message, "GatedRepo")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _agent_harnesses(self, parts: Parts, query: Query, token: str | None, headers: Query) -> _Reply:
        """The registry the client fetches (once a day, unless telemetry is off) to name its user agent."""
        return _json({"standardEnvVars": [], "harnesses": {}})

    def _auth_check(self, parts: Parts, query: Query, token: str | None, headers: Query) -> _Reply:
        self._readable(parts["repo"], token, files=True)
        return _json({})

    def _info(self, parts: Parts, query: Query, token: str | None, headers: Query) -> _Reply:
        repo_id = parts["repo"]
        repo = self._readable(repo_id, token, files=False)
        commit = self._commit(repo, parts.get("rev") or "main")
        return _json(
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0] if "/" in repo_id else None,
                "sha": commit.sha,
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": ["transformers"],
                "library_name": "transformers",
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }
        )

    def _tree(self, parts: Parts, query: Query, token: str | None, headers: Query) -> _Reply:
        repo_id, revision, sub = parts["repo"], parts["rev"], parts["sub"]
        repo = self._readable(repo_id, token, files=False)
        commit = self._commit(repo, revision)
        recursive = query.get("recursive", "false").lower() == "true"
        entries = _tree_entries(commit, sub.strip("/"), recursive)
        if sub and not entries:
            raise _HubError(404, f"{sub} does not exist on {revision}", "EntryNotFound")
        start = int(query.get("cursor") or 0)
        page = entries[start : start + self.page_size]
        headers: dict[str, str] = {}
        if start + self.page_size < len(entries):
            tail = f"/{quote(sub)}" if sub else ""
            url = (
                f"{self.endpoint}/api/models/{repo_id}/tree/{quote(revision, safe='')}{tail}"
                f"?recursive={query.get('recursive', 'false')}&expand={query.get('expand', 'false')}"
                f"&cursor={start + self.page_size}"
            )
            headers["Link"] = f'<{url}>; rel="next"'
        return _json(page, headers=headers)

    def _resolve(self, parts: Parts, query: Query, token: str | None, headers: Query) -> _Reply:
        repo = self._readable(parts["repo"], token, files=True)
        commit = self._commit(repo, parts["rev"])
        path = parts["file"]
        entry = commit.files.get(path)
        if entry is None:
            raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        common = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if entry.lfs_sha256 is not None:  # the Hub redirects LFS files to its CDN, with a signed URL
            expires = "4102444800"
            signature = self._sign(entry.lfs_sha256, expires)
            location = f"{self.cdn_base}/_cdn/{entry.lfs_sha256}?expires={expires}&sig={signature}"
            return _Reply(
                302,
                {
                    **common,
                    "ETag": f'"{entry.oid}"',
                    "X-Linked-Etag": f'"{entry.lfs_sha256}"',
                    "X-Linked-Size": str(entry.size),
                    "Location": location,
                    "Content-Length": "0",
                },
            )
        return _file_reply(entry, {**common, "ETag": f'"{entry.oid}"'}, headers)

    def _sign(self, sha256: str, expires: str) -> str:
        return hmac.new(self._signing_key, f"{sha256}:{expires}".encode(), "sha256").hexdigest()

    def _cdn(self, sha256: str, query: Mapping[str, str], headers: Mapping[str, str]) -> _Reply:
        if not hmac.compare_digest(query.get("sig", ""), self._sign(sha256, query.get("expires", ""))):
            return _Reply(
                403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code></Error>"
            )
        for repo in self.repos.values():
            for commit in repo.commits.values():
                for entry in commit.files.values():
                    if entry.lfs_sha256 == sha256:
                        return _file_reply(entry, {"ETag": f'"{sha256}"'}, headers)
        return _Reply(404, body=b"no such object")


def _tree_entries(commit: Commit, sub: str, recursive: bool) -> list[dict[str, Any]]:
    """The Hub's tree listing of ``sub`` (folders first at each level is not promised; sorted by path)."""
    prefix = f"{sub}/" if sub else ""
    files = [e for p, e in sorted(commit.files.items()) if p.startswith(prefix)]
    folders: set[str] = set()
    entries: list[dict[str, Any]] = []
    for entry in files:
        rest = entry.path[len(prefix) :].split("/")
        for depth in range(1, len(rest)):
            folder = prefix + "/".join(rest[:depth])
            if (recursive or depth == 1) and folder not in folders:
                folders.add(folder)
                oid = hashlib.sha1(f"tree {commit.sha} {folder}".encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "path": folder})
        if recursive or len(rest) == 1:
            item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": entry.path}
            if entry.lfs_sha256 is not None:
                item["size"] = LFS_POINTER_SIZE
                item["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size, "pointerSize": LFS_POINTER_SIZE}
            entries.append(item)
    return entries


def _file_reply(entry: RepoFileEntry, headers: dict[str, str], request: Mapping[str, str]) -> _Reply:
    size = entry.size
    offset = 0
    wanted = request.get("range") or ""
    if (m := re.fullmatch(r"bytes=(\d+)-", wanted.strip())) is not None and 0 < int(m[1]) < size:
        offset = int(m[1])
        headers = {**headers, "Content-Range": f"bytes {offset}-{size - 1}/{size}"}
    return _Reply(
        206 if offset else 200,
        {**headers, "Content-Length": str(size - offset), "Content-Type": "application/octet-stream"},
        file=entry,
        offset=offset,
    )


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> _Reply:
    body = json.dumps(obj).encode()
    return _Reply(
        status,
        {
            "Content-Type": "application/json; charset=utf-8",
            "Content-Length": str(len(body)),
            **(headers or {}),
        },
        body,
    )


class _Handler(TrackedHandler):  # keep-alive, as the client's connection pool expects
    def _answer(self) -> None:
        fake: FakeHub = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        _, reply = fake.handle(self.command, self.path, headers)
        self.send_response(reply.status)
        reply_headers = dict(reply.headers or {})
        reply_headers.setdefault("Content-Length", str(len(reply.body)))
        for name, value in reply_headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.file is None:
            self.wfile.write(reply.body)
            return
        with reply.file.local.open("rb") as source:
            source.seek(reply.offset)
            while chunk := source.read(CHUNK):
                self.wfile.write(chunk)

    do_GET = _answer
    do_HEAD = _answer
    do_POST = _answer
