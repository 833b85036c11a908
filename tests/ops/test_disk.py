from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from triage_node.ops.disk import DiskGuard, free_bytes, free_mb


class FakeDisk:
    """Free megabytes the test sets, and a count of how often the guard looked."""

    def __init__(self, free: float) -> None:
        self.free = free
        self.calls = 0

    def __call__(self, path: Path) -> float:
        self.calls += 1
        return self.free


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_free_space_matches_shutil(tmp_path: Path) -> None:
    expected = shutil.disk_usage(tmp_path).free
    assert abs(free_bytes(tmp_path) - expected) < 64 * 1024 * 1024  # other writers on the machine
    assert free_mb(tmp_path) == pytest.approx(free_bytes(tmp_path) / 2**20, rel=0.01)


def test_free_space_of_a_spool_not_created_yet_is_its_file_system(tmp_path: Path) -> None:
    assert free_mb(tmp_path / "spool" / "not" / "yet") == pytest.approx(free_mb(tmp_path), rel=0.01)


def test_guard_refuses_below_the_floor_and_logs_each_transition_once(caplog: pytest.LogCaptureFixture) -> None:
    disk, clock = FakeDisk(1000), Clock()
    guard = DiskGuard(Path("/spool"), min_free_mb=500, check_interval_s=1.0, clock=clock, probe=disk)
    caplog.set_level(logging.INFO, logger="triage_node.ops.disk")
    assert guard.ok()
    disk.free = 100
    for _ in range(50):  # a burst of C-STOREs within the interval: one statvfs, still the cached answer
        assert guard.ok()
    assert disk.calls == 1
    clock.t = 1.0
    results = [guard.ok() for _ in range(50)]
    clock.t = 2.5
    results += [guard.ok() for _ in range(50)]
    assert not any(results)
    assert guard.last_free_mb == 100
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "100 MB free, below the floor of 500 MB" in warnings[0].getMessage()
    disk.free = 800
    clock.t = 4.0
    assert guard.ok()
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "accepting instances" in infos[0].getMessage()


def test_guard_with_a_zero_floor_never_looks() -> None:
    disk = FakeDisk(0)
    assert DiskGuard(Path("/spool"), min_free_mb=0, probe=disk).ok()
    assert disk.calls == 0


def test_guard_refuses_when_the_spool_cannot_be_checked(caplog: pytest.LogCaptureFixture) -> None:
    def broken(path: Path) -> float:
        raise PermissionError(13, "Permission denied")

    guard = DiskGuard(Path("/spool"), min_free_mb=10, probe=broken)
    assert not guard.ok()
    assert "cannot check free space in /spool" in caplog.text


def test_guard_on_a_real_file_system(tmp_path: Path) -> None:
    assert DiskGuard(tmp_path, min_free_mb=1).ok()
    assert not DiskGuard(tmp_path, min_free_mb=10**9).ok()


def test_guard_validates_its_parameters() -> None:
    with pytest.raises(ValueError, match="min_free_mb must be >= 0, got -1"):
        DiskGuard(Path("/spool"), min_free_mb=-1)
