"""Stage-verify-swap install of an adapter under the output dir, with crash recovery."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from trait_lora.core.adapter.archive import extract_adapter_archive, write_new
from trait_lora.core.adapter.spec import (
    ADAPTER_FILES,
    CHECKPOINTS_DIR,
    DEFAULT_MAX_BYTES,
    STALE_STAGING_SECONDS,
    AdapterInfo,
    AdapterSpec,
)
from trait_lora.core.adapter.verify import require_regular_file, verify_adapter_dir
from trait_lora.core.errors import AdapterError
from trait_lora.core.shards.catalog import check_trait_name
from trait_lora.core.storage.atomic import fsync_dir


def adapter_dir(output_dir: Path, trait: str) -> Path:
    """Where the adapter for ``trait`` lives: ``<output_dir>/lora_checkpoints/<trait>``."""
    check_trait_name(trait)
    return Path(output_dir) / CHECKPOINTS_DIR / trait


def install_adapter(
    source: Path, output_dir: Path, trait: str, spec: AdapterSpec, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[Path, AdapterInfo]:
    """Verify the adapter at ``source`` (directory or archive) and swap it in as ``trait``'s adapter.

    On any failure the staging dir is removed and an earlier install of ``trait`` stays untouched.
    """
    final = adapter_dir(output_dir, trait)
    source = Path(source)
    if not source.exists():
        raise AdapterError(f"adapter source {source} does not exist; download or train the adapter first")
    if not source.is_dir() and not source.is_file():
        raise AdapterError(f"adapter source {source} is neither a directory nor a regular file")
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    with _swap_lock(root):
        _recover(root, trait)
    _remove_stale_staging(root, trait)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{trait}-", dir=root))
    try:
        info = stage_verified(source, staging, spec, max_bytes)
        fsync_dir(staging)
        with _swap_lock(root):
            _recover(root, trait)
            _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, info


def stage_verified(source: Path, staging: Path, spec: AdapterSpec, max_bytes: int) -> AdapterInfo:
    """Copy (or extract) the two PEFT files of ``source`` into the empty folder ``staging`` and verify
    them there: whatever is installed, on a disk or on object storage, is exactly what verified."""
    os.chmod(staging, 0o755)
    if source.is_dir():
        _copy_adapter_dir(source, staging, max_bytes)
    else:
        extract_adapter_archive(source, staging, max_bytes)
    try:
        return verify_adapter_dir(staging, spec)
    except AdapterError as exc:  # name the source the user gave, not a staging dir about to vanish
        detail = str(exc).replace(f"{staging}{os.sep}", "").replace(str(staging), "adapter")
        raise AdapterError(f"adapter from {source}: {detail}") from None


def installed_fingerprint(output_dir: Path, trait: str) -> dict[str, list[int]] | None:
    """What ``stat`` says of the installed adapter's files: size, inode, mtime and ctime (ns); None
    when there is no complete regular-file install.

    Recorded in the hash ledger once the adapter verified: while it is unchanged, a rerun's skip
    trusts the recorded sha256 instead of re-reading megabytes per trait (at a thousand traits that was
    most of an all-skip rerun). Any write, truncation, replacement or rename of a file changes its
    ctime, which no user call can set back, so a changed file is verified in full again. Bit rot is
    not caught here; the hand-off to stage 3 (``hypernetwork_intake``) re-hashes every adapter.
    """
    final = adapter_dir(output_dir, trait)
    found = {}
    for name in ADAPTER_FILES:
        try:
            st = os.lstat(final / name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        found[name] = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    return found


def verify_installed(output_dir: Path, trait: str, spec: AdapterSpec) -> AdapterInfo | None:
    """The installed adapter's info; None when ``trait`` has none; AdapterError when it is bad."""
    final = adapter_dir(output_dir, trait)
    root = final.parent
    if not root.is_dir():
        return None
    with _swap_lock(root):
        _recover(root, trait)
        if not final.exists() and not final.is_symlink():
            return None
        if final.is_symlink() or not final.is_dir():
            raise AdapterError(
                f"{final} is not a directory; remove it and install the adapter for {trait} again"
            )
        return verify_adapter_dir(final, spec)


def _copy_adapter_dir(source: Path, staging: Path, max_bytes: int) -> None:
    written: list[Path] = []
    total = 0
    for name in ADAPTER_FILES:
        require_regular_file(source, name)
        path = source / name
        total += path.stat().st_size
        if total > max_bytes:
            raise AdapterError(
                f"{source}: adapter files exceed the {max_bytes}-byte cap; is this an adapter?"
            )
        with open(path, "rb") as fh:
            write_new(staging / name, fh, written, str(path))


def _swap_in(staging: Path, final: Path) -> None:
    """Park the old adapter, rename staging into place, then drop the old one.

    A crash between the two renames leaves only ``.previous-<trait>-*``; ``_recover`` puts it back.
    """
    root = final.parent
    previous: Path | None = None
    if final.exists() or final.is_symlink():
        previous = root / f".previous-{final.name}-{secrets.token_hex(6)}"
        os.rename(final, previous)
    try:
        os.rename(staging, final)
    except BaseException:
        if previous is not None:
            os.rename(previous, final)
        raise
    fsync_dir(root)
    if previous is not None:
        _remove(previous)


def _previous_dirs(root: Path, trait: str) -> list[Path]:
    pattern = re.compile(rf"\.previous-{re.escape(trait)}-[^-/]+")
    return [p for p in root.iterdir() if pattern.fullmatch(p.name)]


def _recover(root: Path, trait: str) -> None:
    """Repair a crash mid-swap: restore a parked adapter if ``<trait>`` is gone, else drop leftovers."""
    previous = _previous_dirs(root, trait)
    if not previous:
        return
    final = root / trait
    if not final.exists() and not final.is_symlink():
        candidates = [p for p in previous if p.is_dir() and not p.is_symlink()]
        if candidates:
            newest = max(candidates, key=lambda p: p.lstat().st_mtime)
            os.rename(newest, final)
            fsync_dir(root)
            previous.remove(newest)
    for path in previous:
        _remove(path)


def _remove_stale_staging(root: Path, trait: str) -> None:
    cutoff = time.time() - STALE_STAGING_SECONDS
    for path in root.glob(f".staging-{trait}-*"):
        with contextlib.suppress(OSError):
            if path.lstat().st_mtime < cutoff:
                _remove(path)


def _remove(path: Path) -> None:
    """Delete a file, link or tree without following links out of it."""
    if path.is_symlink() or not path.is_dir():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _swap_lock(root: Path) -> Iterator[None]:
    """Serialise swaps and crash recovery across processes on this host.

    The lock is an flock on the ``lora_checkpoints`` directory itself, so no lock file is left
    behind for listings of that directory to trip over; swaps are two renames, so sharing one lock
    between traits costs nothing noticeable.
    """
    fd = os.open(root, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some network filesystems cannot lock a directory
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
