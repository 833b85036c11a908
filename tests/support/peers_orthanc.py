"""Orthanc (Debian's ``/usr/sbin/Orthanc``) as a real PACS peer for tests.

``start_orthanc(tmp_path, modalities={...})`` writes a JSON configuration into ``tmp_path``, starts Orthanc on free
ports, waits for its REST API and returns an ``Orthanc`` handle; ``stop()`` / ``start()`` restart it on the same ports
with the same storage, so a test can take the PACS away and bring it back. Use it as a context manager or call
``stop()`` in a ``finally``.

Orthanc 1.10 cannot bind its DICOM port to one address: it listens on all interfaces, on an ephemeral port, for the
life of the test. Its HTTP server only accepts loopback clients (``RemoteAccessAllowed: false``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from peers import find_tool, free_port, wait_for


@dataclass(frozen=True)
class Modality:
    """A DICOM peer Orthanc knows (needed for C-STORE SCU from Orthanc, storage commitment reports, C-MOVE)."""

    ae_title: str
    host: str = "127.0.0.1"
    port: int = 104


@dataclass
class Orthanc:
    workdir: Path
    ae_title: str
    dicom_port: int
    http_port: int
    config_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def start(self, timeout: float = 60) -> Orthanc:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [find_tool("Orthanc"), "--no-jobs", str(self.config_path)],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout=timeout, interval=0.1, what="Orthanc's REST API")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/system", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 30, graceful: bool = True) -> None:
        """SIGTERM and wait (Orthanc takes about 3 s), or SIGKILL with ``graceful=False`` (a PACS crash; fast)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str) -> Any:
        """GET a REST resource (``/instances``, ``/studies/<id>/series``, ...) and return its JSON."""
        r = httpx.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=60)
        r.raise_for_status()
        return r.json()

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or None."""
        r = httpx.post(f"{self.url}/tools/lookup", content=sop_instance_uid, timeout=30)
        r.raise_for_status()
        for hit in r.json():
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's main tags in Orthanc's simplified form (``{"SOPInstanceUID": ...}``)."""
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def file(self, instance_id: str) -> bytes:
        r = httpx.get(f"{self.url}/instances/{instance_id}/file", timeout=60)
        r.raise_for_status()
        return r.content

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop(graceful=False)


def start_orthanc(
    workdir: Path,
    *,
    ae_title: str = "ORTHANC",
    modalities: Mapping[str, Modality] | None = None,
    always_allow_store: bool = True,
    extra: Mapping[str, Any] | None = None,
    start: bool = True,
) -> Orthanc:
    """Configure Orthanc in ``workdir`` on free ports and (by default) start it.

    ``modalities``: name -> Modality, written to ``DicomModalities``. ``always_allow_store=False`` makes Orthanc refuse
    C-STORE from AE titles that are not listed. ``extra``: further configuration keys (they win).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": f"triage-node test PACS {workdir.name}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": always_allow_store,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": {
            name: {"AET": m.ae_title, "Host": m.host, "Port": m.port} for name, m in (modalities or {}).items()
        },
        "DicomAssociationCloseDelay": 0,
        "StableAge": 1,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "DicomThreadsCount": 2,
        "StorageCompression": False,
        "OverwriteInstances": False,
        "Plugins": [],
        "LuaScripts": [],
        **(extra or {}),
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    orthanc = Orthanc(workdir, ae_title, dicom_port, http_port, config_path)
    return orthanc.start() if start else orthanc
