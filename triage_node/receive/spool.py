"""The spool: each received instance's bytes written to a temporary file while they arrive, then fsynced, renamed
to a name that carries their hash and their folder fsynced, before the SCP may answer success.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from triage_node.receive.header import Header

log = logging.getLogger(__name__)


def _safe(uid: str) -> str:
    # UIDs are digits and dots; anything else (a hostile header) must not reach the file system.
    return "".join(c for c in uid if c.isdigit() or c == ".")[:64] or "invalid"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Instance files under ``root/<study>/<series>/<sop>.<sha16>.dcm``; a name is never reused for other bytes."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._serial = 0
        # In temporary names: receive processes on several machines may share the spool, and pids repeat.
        self._token = os.urandom(4).hex()

    def relative_path(self, header: Header, sha: str) -> str:
        return f"{_safe(header.study_uid)}/{_safe(header.series_uid)}/{_safe(header.sop_instance_uid)}.{sha[:16]}.dcm"

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        created = []
        for p in reversed([folder, *folder.parents]):
            if (p == self.root or self.root in p.parents) and not p.exists():
                p.mkdir(exist_ok=True)
                created.append(p)
        for p in created:  # make each new folder's entry durable in its parent
            _fsync_dir(p.parent)
        self._known_dirs.add(folder)

    def incoming(self) -> Incoming:
        """A temporary file for an instance that is arriving (see :class:`Incoming`)."""
        folder = self.root / ".incoming"
        if folder not in self._known_dirs:
            try:
                folder.mkdir(exist_ok=True)
                self._known_dirs.add(folder)
            except OSError:
                pass  # the file cannot be created either: Incoming keeps that error for its sender's status
        with self._lock:
            self._serial += 1
            n = self._serial
        return Incoming(self, folder / f".{os.getpid()}.{self._token}.{threading.get_ident()}.{n}.tmp")

    def keep(self, tmp: Path, rel: str) -> Path:
        """Move the fsynced temporary file ``tmp`` to ``rel`` and fsync its folder (the new entry is then durable);
        an existing file of that name holds the same bytes (the name carries their hash), so ``tmp`` is dropped.
        The folder is fsynced in that case too: another association may have renamed that file a moment ago and
        not yet made its entry durable. Each association's thread does this in parallel; only the row commit is
        shared (``GroupCommitter``)."""
        final = self.root / rel
        if final.exists():
            tmp.unlink(missing_ok=True)
        else:
            self._ensure_dir(final.parent)
            os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final

    def remove_temporaries(self, older_than_s: float | None = None) -> int:
        """Delete ``*.tmp`` files left by a crash mid-write (their senders never got a success status).
        ``older_than_s``: only those not written to for that long (a spool shared with other receive processes holds
        their transfers in progress too)."""
        n = 0
        cutoff = None if older_than_s is None else time.time() - older_than_s
        for tmp in self.root.rglob(".*.tmp"):
            try:
                if cutoff is not None and tmp.stat().st_mtime > cutoff:
                    continue
            except FileNotFoundError:
                continue
            tmp.unlink(missing_ok=True)
            n += 1
        return n


class Incoming:
    """An instance's bytes hashed and written to a temporary file while its PDUs are still arriving, so the work
    overlaps the sender's; ``keep`` fsyncs it and moves it to its final name. A write error (a full disk) is kept
    and raised by ``keep``, after the whole message was read, so the sender still gets its status."""

    def __init__(self, spool: Spool, tmp: Path):
        self.spool = spool
        self.tmp = tmp
        self.size = 0
        self.error: OSError | None = None
        self._hash = hashlib.sha256()
        self._fd: int | None = None
        try:
            self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:  # reported by keep(), after the whole message was read
            self.error = exc

    def add(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self._fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.error = exc

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def keep(self, rel: str) -> Path:
        """fsync the file, move it to ``rel`` and fsync the folder; raises a write error."""
        try:
            if self.error is not None:
                raise self.error
            assert self._fd is not None
            os.fsync(self._fd)
            self._close()
            return self.spool.keep(self.tmp, rel)
        except OSError:
            self.discard()  # a full disk must not leave partial files behind
            raise

    def discard(self) -> None:
        self._close()
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError as exc:  # never fail a sender, or an association's end, over a temporary file
            log.warning("cannot remove the temporary file %s: %s", self.tmp.name, exc)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None




def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
