"""Free space in the spool, and the guard the C-STORE handler asks before accepting an instance.

Below ``storage.min_free_mb`` new instances are refused with 0xA700 (Out of Resources): the PACS keeps them and
retries later, which is better than a half-written spool or a full disk under the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MB = 1024 * 1024


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the spool may not be created yet; its file system is what counts)."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path


def free_bytes(path: Path) -> int:
    """Bytes available to an unprivileged writer on the file system holding ``path``."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def free_mb(path: Path) -> float:
    """Mebibytes available to an unprivileged writer on the file system holding ``path``."""
    return free_bytes(path) / MB


class DiskGuard:
    """``ok()`` is False while the spool's file system has less than ``min_free_mb`` free.

    The answer is cached for ``check_interval_s`` (of ``clock``, monotonic seconds) so that a burst of C-STOREs costs
    one ``statvfs`` per interval; a warning is logged when the state turns low and an info line when it recovers,
    never once per instance. Safe to call from many association threads.
    """

    def __init__(
        self,
        spool_dir: Path,
        min_free_mb: float,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[Path], float] = free_mb,
    ) -> None:
        if min_free_mb < 0:
            raise ValueError(f"min_free_mb must be >= 0, got {min_free_mb}")
        if check_interval_s < 0:
            raise ValueError(f"check_interval_s must be >= 0, got {check_interval_s}")
        self.spool_dir = Path(spool_dir)
        self.min_free_mb = min_free_mb
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._probe = probe
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._ok = True
        self.last_free_mb: float | None = None

    def ok(self) -> bool:
        if self.min_free_mb == 0:
            return True
        now = self._clock()
        with self._lock:
            if self._checked_at is not None and now - self._checked_at < self.check_interval_s:
                return self._ok
            self._checked_at = now
            try:
                free = self._probe(self.spool_dir)
            except OSError as exc:
                # Cannot tell: refuse, since a spool we cannot stat is one we probably cannot write either.
                self._set(False, f"cannot check free space in {self.spool_dir}: {exc}")
                return False
            self.last_free_mb = free
            if free < self.min_free_mb:
                self._set(False, f"spool {self.spool_dir} has {free:.0f} MB free, below the floor of "
                                 f"{self.min_free_mb:g} MB: refusing new instances with 0xA700")
            else:
                self._set(True, f"spool {self.spool_dir} has {free:.0f} MB free again: accepting instances")
            return self._ok

    def _set(self, ok: bool, message: str) -> None:
        if ok != self._ok:
            if ok:
                log.info(message)
            else:
                log.warning(message)
        self._ok = ok
