"""systemd/install.sh into a temporary root (DESTDIR): files land where the unit expects them, the config points at
the service paths and validates, the staged unit verifies, a second run upgrades in place and keeps the edited config.

Installing the dependencies (torch alone is hundreds of MB) is out of scope here: the test pre-creates the venv
without pip and lets it see this venv's site-packages through a .pth file, then runs install.sh --no-deps, which
builds and installs triage-node itself from a clean copy of the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml
from peers import find_tool

# SQLite only: the subject is the installed config and its embedded default database
ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "systemd" / "install.sh"
PREFIX = "/opt/triage-node"


def run_install(dest: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_NODE__")}
    env |= {"DESTDIR": str(dest), "PIP_ARGS": "--no-build-isolation --no-index"}
    return subprocess.run(
        ["bash", str(INSTALL), "--no-deps", "--python", sys.executable, *args],
        capture_output=True, text=True, timeout=300, env=env,
    )


def staged_venv(dest: Path) -> Path:
    venv = dest / PREFIX.lstrip("/") / "venv"
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "dev-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_install_into_a_temporary_root(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    venv = staged_venv(dest)
    first = run_install(dest)
    assert first.returncode == 0, first.stdout + first.stderr

    exe = venv / "bin" / "triage-node"
    assert exe.exists()
    # The staged venv runs its own copy of the package, not the checkout.
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c", "import triage_node; print(triage_node.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where

    conf = dest / "etc/triage-node/config.yaml"
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    data = yaml.safe_load(conf.read_text())
    assert data["storage"]["spool_dir"] == "/var/lib/triage-node/spool"
    assert data["storage"]["database_url"] == "sqlite:////var/lib/triage-node/triage-node.db"
    assert data["models"]["dir"] == f"{PREFIX}/models"
    check = subprocess.run([str(exe), "check-config", "--config", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    unit = dest / "etc/systemd/system/triage-node.service"
    assert f"ExecStart={PREFIX}/venv/bin/triage-node serve --config /etc/triage-node/config.yaml" in unit.read_text()
    assert (dest / "usr/lib/sysusers.d/triage-node.conf").exists()
    assert (dest / PREFIX.lstrip("/") / "docs" / "conformance.md").exists()
    assert (dest / PREFIX.lstrip("/") / "models").is_dir()

    # The staged unit, pointed at the staged binary, verifies.
    staged = tmp_path / "triage-node.service"
    staged.write_text(unit.read_text().replace(f"{PREFIX}/venv/bin/triage-node", str(exe)))
    verify = subprocess.run([find_tool("systemd-analyze"), "verify", str(staged)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr

    # The sysusers snippet is valid: systemd-sysusers creates the user inside the staged root.
    sysusers = subprocess.run(
        [find_tool("systemd-sysusers"), f"--root={dest}", str(dest / "usr/lib/sysusers.d/triage-node.conf")],
        capture_output=True, text=True,
    )
    assert sysusers.returncode == 0, sysusers.stderr
    passwd = (dest / "etc/passwd").read_text()
    assert any(line.startswith("triage-node:") and line.endswith(":/var/lib/triage-node:/usr/sbin/nologin")
               for line in passwd.splitlines()), passwd

    # Upgrade: the operator's edits survive, the template is refreshed, the package is reinstalled.
    conf.write_text(conf.read_text().replace("port: 11112", "port: 11113"))
    (dest / "etc/triage-node/config.yaml.dist").unlink()
    second = run_install(dest)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "kept" in second.stdout
    assert "port: 11113" in conf.read_text()
    assert (dest / "etc/triage-node/config.yaml.dist").exists()

    # An upgrade refuses to finish with a config the new code rejects.
    conf.write_text(conf.read_text().replace("port: 11113", "port: 70000"))
    third = run_install(dest)
    assert third.returncode == 1
    assert "scp.port" in third.stdout + third.stderr


def test_install_refuses_relative_paths(tmp_path: Path) -> None:
    proc = run_install(tmp_path, "--prefix", "opt/x")
    assert proc.returncode == 2 and "must be an absolute path" in proc.stderr
