"""The unit file passes ``systemd-analyze verify`` and scores "OK" (<= 2.5) in ``systemd-analyze security``; both
work on a unit file without systemd running as PID 1."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from peers import find_tool

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "triage-node.service"
EXEC = "/opt/triage-node/venv/bin/triage-node"


def directives(text: str) -> dict[str, list[str]]:
    """``Key`` -> values in order (systemd allows a key several times)."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()].append(value.strip())
    return out


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a triage-node that exists here (verify checks the binary)."""
    exe = Path(sys.prefix) / "bin" / "triage-node"
    assert exe.exists(), exe
    path = tmp_path / "triage-node.service"
    path.write_text(UNIT.read_text().replace(EXEC, str(exe)))
    return path


def test_systemd_analyze_verify_passes(runnable_unit: Path) -> None:
    tool = find_tool("systemd-analyze")
    proc = subprocess.run([tool, "verify", str(runnable_unit)], capture_output=True, text=True, timeout=60)
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "triage-node" in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def exposure(unit: Path) -> tuple[float, str, str]:
    tool = find_tool("systemd-analyze")
    proc = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, cwd=unit.parent,
    )
    text = proc.stdout + proc.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", text)
    assert m, text
    return float(m.group(1)), m.group(2), text


def test_security_exposure_is_ok(runnable_unit: Path) -> None:
    score, label, text = exposure(runnable_unit)
    assert score <= 2.5 and label == "OK", text


def test_the_parser_would_notice_a_weak_unit(tmp_path: Path) -> None:
    weak = tmp_path / "weak.service"
    weak.write_text("[Service]\nExecStart=/bin/true\n")
    score, label, _ = exposure(weak)
    assert score > 2.5 and label != "OK"


def test_the_unit_keeps_its_contract() -> None:
    d = directives(UNIT.read_text())
    expect = {
        "Type": "notify", "Restart": "on-failure", "NotifyAccess": "main", "User": "triage-node",
        "StateDirectory": "triage-node", "LogsDirectory": "triage-node", "CacheDirectory": "triage-node",
        "ConfigurationDirectory": "triage-node", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "SystemCallArchitectures": "native", "UMask": "0077",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "ExecReload": "/bin/kill -HUP $MAINPID",
        "ExecStart": f"{EXEC} serve --config /etc/triage-node/config.yaml",
    }
    for key, value in expect.items():
        assert d[key] == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert int(d["WatchdogSec"][0]) >= 10
    assert int(d["TimeoutStopSec"][0]) >= 60  # App.shutdown waits up to 60 s for transfers and the running job
