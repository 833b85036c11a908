"""Does torch CPU inference survive ``MemoryDenyWriteExecute=yes``? The answer is recorded in the unit and in
docs/operations.md; this test keeps both honest (it fails the day a torch update changes the answer)."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

from peers import require

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("mdwe_probe.py")


def probe(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_onednn_needs_wx_pages_so_the_unit_leaves_mdwe_off() -> None:
    require(ctypes.util.find_library("seccomp") is not None, "libseccomp is not installed")
    control = probe("--no-filter")
    assert control["densenet2d_mkldnn_on"] == "ok", control

    under_mdwe = probe()
    assert under_mdwe["wx_mmap_denied"] is True  # the filter is in force
    # oneDNN JIT-compiles its convolution kernels into writable+executable memory: denied.
    assert under_mdwe["densenet2d_mkldnn_on"] == "error: could not create a primitive", under_mdwe
    # torch's own kernels need no W+X pages: MDWE would work only with oneDNN disabled (slower, see the docs).
    assert under_mdwe["densenet2d_mkldnn_off"] == "ok"
    assert under_mdwe["unet3d_mkldnn_off"] == "ok"

    unit = (ROOT / "systemd" / "triage-node.service").read_text()
    assert "MemoryDenyWriteExecute=no" in unit
    assert "MemoryDenyWriteExecute" in (ROOT / "docs" / "operations.md").read_text()
