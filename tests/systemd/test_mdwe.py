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


def probes(*arglists: tuple[str, ...]) -> list[dict[str, object]]:
    """Run the probe once per argument list, concurrently (each spends most of its time importing torch)."""
    procs = [
        subprocess.Popen([sys.executable, str(PROBE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
        for args in arglists
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(dict(json.loads(out.strip().splitlines()[-1])))
    return results


def test_onednn_needs_wx_pages_so_the_unit_leaves_mdwe_off() -> None:
    require(ctypes.util.find_library("seccomp") is not None, "libseccomp is not installed")
    control, under_mdwe = probes(("--no-filter",), ())
    assert control["conv2d_mkldnn_on"] == "ok", control

    assert under_mdwe["wx_mmap_denied"] is True  # the filter is in force
    # oneDNN JIT-compiles its convolution kernels into writable+executable memory: denied.
    assert under_mdwe["conv2d_mkldnn_on"] == "error: could not create a primitive", under_mdwe
    # torch's own kernels need no W+X pages: MDWE would work only with oneDNN disabled (slower, see the docs).
    assert under_mdwe["conv2d_mkldnn_off"] == "ok"
    assert under_mdwe["conv3d_mkldnn_off"] == "ok"

    unit = (ROOT / "systemd" / "triage-node.service").read_text()
    assert "MemoryDenyWriteExecute=no" in unit
    assert "MemoryDenyWriteExecute" in (ROOT / "docs" / "operations.md").read_text()
