"""The fake Hub's repositories: real files on disk, one folder per commit, git-style ids.

A commit's files are copied into ``<root>/<org>--<name>/<commit sha>/`` and never change afterwards,
so a download at a commit id always returns the same bytes, as on the Hub. Ids are computed the way
git and git-lfs compute them (``sha1("blob <size>\\0" + data)`` for a file, sha256 of the content for
an LFS file), because ``huggingface_hub`` keys its cache on the ``ETag`` the Hub derives from them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Stored with git-lfs on the Hub (its default .gitattributes covers these): served through the CDN.
DEFAULT_LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pth", "*.pt", "*.gguf", "*.h5", "*.onnx", "*.msgpack")
LFS_POINTER_SIZE = 134  # bytes of a git-lfs pointer file, as the Hub reports in "pointerSize"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RepoFileEntry:
    """One file of one commit: where its bytes are and the ids the Hub reports for it."""

    path: str
    size: int
    oid: str  # the git blob id (of the pointer file, for LFS)
    local: Path
    lfs_sha256: str | None = None

    @property
    def etag(self) -> str:
        """What the Hub sends as the file's ETag (X-Linked-Etag for LFS): the id its cache is keyed on."""
        return self.lfs_sha256 or self.oid


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    message: str
    files: Mapping[str, RepoFileEntry]


@dataclass
class Repo:
    """A model repository: commits, branches and tags, and who may read it."""

    repo_id: str
    folder: Path
    private: bool = False
    gated: bool = False
    readers: set[str] = field(default_factory=set)  # tokens granted a private or gated repo
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch, tag or full commit id names; None for anything else."""
        sha = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(sha)

    def is_lfs(self, path: str) -> bool:
        return any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern) for pattern in self.lfs_patterns)

    def commit(self, changes: Mapping[str, bytes | None], *, branch: str = "main", message: str = "") -> str:
        """Apply ``changes`` (path -> bytes, or None to delete) on top of ``branch``; return the new id."""
        parent = self.commits.get(self.branches.get(branch, ""))
        files: dict[str, bytes | Path] = {p: e.local for p, e in (parent.files.items() if parent else ())}
        for path, data in changes.items():
            _check_path(path)
            if data is None:
                files.pop(path, None)
            else:
                files[path] = data
        listing = sorted((p, _read(d)) for p, d in files.items())
        tree = hashlib.sha1()
        for path, data in listing:
            tree.update(f"{path}\0{git_blob_oid(data)}\n".encode())
        header = f"tree {tree.hexdigest()}\nparent {parent.sha if parent else ''}\n\n{message}\n"
        sha = hashlib.sha1(f"commit {len(header)}\0{header}".encode()).hexdigest()
        if sha in self.commits:  # the same tree, parent and message: git would give the same id too
            self.branches[branch] = sha
            return sha
        target = self.folder / sha
        entries: dict[str, RepoFileEntry] = {}
        for path, data in listing:
            local = target / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            if self.is_lfs(path):
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = (
                    f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
                )
                oid, lfs = git_blob_oid(pointer.encode()), sha256
            else:
                oid, lfs = git_blob_oid(data), None
            entries[path] = RepoFileEntry(path, len(data), oid, local, lfs)
        self.commits[sha] = Commit(sha, parent.sha if parent else None, message, entries)
        self.branches[branch] = sha
        return sha


def files_of_folder(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its POSIX path relative to it (a model folder to publish)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def new_repo(root: Path, repo_id: str, *, private: bool, gated: bool) -> Repo:
    folder = root / repo_id.replace("/", "--")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return Repo(repo_id, folder, private=private, gated=gated)


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad repository path {path!r}")


def _read(data: bytes | Path) -> bytes:
    return data.read_bytes() if isinstance(data, Path) else data
