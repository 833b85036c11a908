"""What the bench scripts share: peers (triage-node daemon, DCMTK storescp, Orthanc), synthetic data, the machine's
description and the JSON result files.

Benchmarks are not tests: a missing peer is reported in the results (``"skipped": "<why>"``) instead of failing.
The daemon and Orthanc helpers are the ones the tests use (``tests/support/peers.py``,
``tests/support/peers_orthanc.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / "work"  # git-ignored: data, spools, databases
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT / "tests" / "support"))

from peers import Daemon, free_port, make_daemon, wait_for  # noqa: E402

# Pure ingest: no models, no routing to a pipeline that would load the series while the next run sends.
NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}


class PeerMissing(RuntimeError):
    """A peer program is not installed; the benchmark records the reason and goes on."""


def tool(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )
    if path is None:
        raise PeerMissing(f"{name} is not installed")
    return path


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def filesystem(path: Path) -> str:
    """The file system type under ``path`` and, for ext4, whether it has a journal: without one, ext4 skips every
    inode deleted in the last 5 to 300 s while it looks for a free one, so creating a file after many deletions costs
    up to ~1 ms of kernel time (bench/README.md)."""
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout.splitlines()
    if len(out) < 2:
        return "?"
    device, kind = out[-1].split()[:2]
    if kind == "ext4":
        journals = [p.name.rsplit("-", 1)[0] for p in Path("/proc/fs/jbd2").glob("*")]
        kind += " (journal)" if Path(os.path.realpath(device)).name in journals else " (no journal)"
    return kind


def machine() -> dict[str, Any]:
    """Where the figures were measured: CPU, cores, memory, kernel, load at the start, peers' versions."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024

    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            return out[0] if out else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "missing"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "filesystem": filesystem(ROOT),
        "load_avg_1m_at_start": os.getloadavg()[0],
        "dcmtk": version(["storescu", "--version"]).strip("$ "),
        "orthanc": version(["/usr/sbin/Orthanc", "--version"]),
        "note": "a virtual machine whose disk and cores are shared with other tenants: single runs move by up to 2x "
        "(a flush can stall for seconds); peers are measured in the same run, interleaved, and medians reported",
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# -- data -------------------------------------------------------------------------------------------------------------


class _PhantomStack:
    """A tall phantom head made lazily slice by slice: ``write_series`` only needs ``shape`` and ``[z]``, and the
    whole 1000 x 512 x 512 float volume (1 GB) never has to exist."""

    def __init__(self, n_slices: int, size: int, base_slices: int = 100):
        from triage_lab.synth.phantom import phantom_head

        self.base, spacing = phantom_head(base_slices, size)
        self.shape = (n_slices, size, size)
        self.spacing = (200.0 / max(n_slices - 1, 1), spacing[1], spacing[2])
        self._step = base_slices / n_slices

    def __getitem__(self, z: int) -> np.ndarray:
        return np.asarray(self.base[min(int(z * self._step), self.base.shape[0] - 1)])


def ct_series(n_slices: int, size: int = 512, seed: int = 9000, declare_count: bool = False) -> list[Path]:
    """``n_slices`` synthetic ``size`` x ``size`` CT slices (phantom head), written once and cached in bench/work."""
    from triage_lab.synth.dicom import write_series

    out = WORK / "data" / f"ct_{n_slices}x{size}_s{seed}_{'count' if declare_count else 'nocount'}"
    done = out.with_name(out.name + ".complete")  # beside, not inside: storescu +sd sends every file it finds
    if done.exists():
        return sorted(out.glob("*.dcm"))
    fresh(out)
    stack = _PhantomStack(n_slices, size)
    paths = write_series(out, stack, stack.spacing, seed, declare_count=declare_count)  # type: ignore[arg-type]
    done.touch()
    return paths


def split_into_folders(paths: Sequence[Path], parts: int) -> list[Path]:
    """Hard-link ``paths`` into ``parts`` sibling folders (round robin) so parallel ``storescu +sd`` runs share them."""
    base = paths[0].parent.with_name(f"{paths[0].parent.name}_first{len(paths)}_split{parts}")
    dirs = [base / f"part{i}" for i in range(parts)]
    done = base.with_name(base.name + ".complete")
    if done.exists():
        return dirs
    fresh(base)
    for d in dirs:
        d.mkdir()
    for i, p in enumerate(paths):
        os.link(p, dirs[i % parts] / p.name)
    done.touch()
    return dirs


# -- senders and receivers ---------------------------------------------------------------------------------------------


def storescu_folders(port: int, folders: Sequence[Path], called: str, timeout: float = 900) -> float:
    """Send each folder with its own ``storescu +sd`` (one association each), all at once; -> wall seconds until the
    last sender exits. Raises when a sender fails."""
    exe = tool("storescu")
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [exe, "-aet", "BENCH", "-aec", called, "+sd", "127.0.0.1", str(port), str(f)],
            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for f in folders
    ]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-2000:])
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError("storescu failed:\n" + "\n".join(errors))
    return elapsed


@dataclass
class Storescp:
    """DCMTK storescp, tuned as the issue asks (``+B -pdu 131072``, TCP_NODELAY)."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def count(self) -> int:
        return sum(1 for _ in (self.workdir / "out").iterdir())


@contextlib.contextmanager
def storescp(workdir: Path) -> Iterator[Storescp]:
    exe = tool("storescp")
    fresh(workdir)
    (workdir / "out").mkdir()
    port = free_port()
    log = open(workdir / "storescp.log", "wb")  # noqa: SIM115 - closed below
    # storescp 3.6.7 has no bind option: it listens on every interface, on an ephemeral port, for the run only.
    proc = subprocess.Popen(
        [exe, "+B", "-pdu", "131072", "-aet", "STORESCP", "-od", str(workdir / "out"), str(port)],
        env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    scp = Storescp(workdir, port, proc)
    try:
        wait_for(lambda: _echo(port, "STORESCP"), timeout=30, what="storescp to listen")
        yield scp
    finally:
        scp.stop()
        log.close()


def _echo(port: int, called: str) -> bool:
    proc = subprocess.run([tool("echoscu"), "-aec", called, "127.0.0.1", str(port)], env=dcmtk_env(),
                          capture_output=True, timeout=30)
    return proc.returncode == 0


@contextlib.contextmanager
def orthanc(workdir: Path, threads: int = 4) -> Iterator[Any]:
    from peers_orthanc import start_orthanc

    tool("Orthanc")
    fresh(workdir)
    o = start_orthanc(workdir, extra={"DicomThreadsCount": threads, "MaximumPduLength": 131072})
    try:
        yield o
    finally:
        o.stop()


@contextlib.contextmanager
def daemon(workdir: Path, **overrides: str) -> Iterator[Daemon]:
    fresh(workdir)
    d = make_daemon(workdir, **overrides).start()
    try:
        yield d
    finally:
        d.stop()


def rss_sampler(pid: int) -> Callable[[], int]:
    """-> a function returning the resident set size of ``pid`` and its children in bytes (0 when gone)."""

    def rss() -> int:
        total = 0
        pids = [pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            pids += [int(c) for c in children]
        for p in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    return rss
