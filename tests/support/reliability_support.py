"""Helpers of the reliability suite: daemons with the stub model, small series, a recording C-STORE sender, Orthanc
result counts, and the run's figures (written to test-output/reliability.json at the end of the session)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers import ROOT, Daemon, make_daemon
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head

HERE = Path(__file__).resolve().parent
FULL = os.environ.get("TRIAGE_NODE_FULL", "").lower() in ("1", "true", "yes")
# An empty mapping from the environment is merged into config.yaml's pipelines, so each pipeline is emptied by name.
NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}
# What a synthetic identity looks like (triage_lab.synth.dicom.series_ids) plus the hostile corpus' own names.
PHI_PATTERNS = (
    re.compile(r"SYNTH\^PATIENT\d+"), re.compile(r"\bSYN\d{7}\b"), re.compile(r"ÄRZTIN|Müller|山田|HOSTILE\^"),
)


@dataclass
class Figures:
    """What the suite proved, summed over the session."""

    kills: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    instances_acked: int = 0
    instances_stored: int = 0
    instances_lost: int = 0
    result_sets_delivered: int = 0
    duplicate_results: int = 0
    hostile_inputs: int = 0
    hostile_outcomes: dict[str, str] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    outage: dict[str, Any] = field(default_factory=dict)
    access: dict[str, str] = field(default_factory=dict)
    logs_scanned: int = 0
    phi_hits: int = 0
    daemon_logs: list[Path] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "full": FULL,
            "kills_survived": self.kills,
            "kills_by_phase": dict(self.kills_by_phase),
            "instances_acked": self.instances_acked,
            "instances_stored": self.instances_stored,
            "lost": self.instances_lost,
            "result_sets_delivered": self.result_sets_delivered,
            "duplicate_results": self.duplicate_results,
            "hostile_inputs_tried": self.hostile_inputs,
            "hostile_outcomes": self.hostile_outcomes,
            "load": self.load,
            "outage": self.outage,
            "access": self.access,
            "daemon_logs_scanned": self.logs_scanned,
            "phi_hits_in_logs": self.phi_hits,
        }


def stub_models(folder: Path, delay_s: float = 0.0) -> dict[str, str]:
    """Write a model card for the stub analyzer; return the env that makes the daemon run it for ct_head."""
    model = folder / "stub"
    model.mkdir(parents=True, exist_ok=True)
    weights = model / "weights.bin"
    weights.write_bytes(b"reliability stub weights\n")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    (model / "model.yaml").write_text(
        "name: stub\nversion: 1.0.0\nanalyzer: stand_ins:StubAnalyzer\nweights: weights.bin\n"
        f"sha256: {digest}\narchitecture: {{kind: threshold}}\ninput: {{modality: CT}}\nclasses: [hemorrhage_extent]\n"
        "thresholds: {hemorrhage_extent: 0.5}\nintended_use: reliability tests only\n"
        f"postprocess: {{delay_s: {delay_s}}}\n"
    )
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "TRIAGE_NODE__MODELS__DIR": str(folder),
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": ["stub"], "mr_swi": [], "mr_dwi": []}),
        "PYTHONPATH": pythonpath,
    }


def destination(port: int, max_attempts: int = 100, backoff_initial_s: float = 0.2, backoff_max_s: float = 1.0) -> str:
    return json.dumps([{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port,
                        "max_attempts": max_attempts, "backoff_initial_s": backoff_initial_s,
                        "backoff_max_s": backoff_max_s}])


def patient_identity_in_logs(logs: Sequence[Path]) -> list[str]:
    """Every line of ``logs`` that shows a patient name or ID (PHI_PATTERNS), as ``folder/file:line: match``."""
    hits = []
    for path in logs:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            hits += [f"{path.parent.parent.name}/{path.name}:{n}: {m.group(0)}" for pat in PHI_PATTERNS
                     for m in [pat.search(line)] if m]
    return hits


def new_daemon(figures: Figures, workdir: Path, **env: str) -> Daemon:
    d = make_daemon(workdir, **env)
    figures.daemon_logs.append(d.log_path)
    return d


def phantom_series(out_dir: Path, seed: int, slices: int = 8, size: int = 64, **kwargs: Any) -> list[Path]:
    hu, spacing = phantom_head(slices, size)
    return write_series(out_dir, hu, spacing, seed, **kwargs)


@dataclass
class SendLog:
    """Which SOP Instance UIDs got which C-STORE status (None: no response, the association died)."""

    statuses: dict[str, int | None] = field(default_factory=dict)

    @property
    def acked(self) -> set[str]:
        return {uid for uid, st in self.statuses.items() if st == 0}


def send_files(port: int, paths: Sequence[Path], log: SendLog | None = None, calling: str = "MODALITY",
               called: str = "TRIAGE_NODE", sop_class: str = CTImageStorage,
               transfer_syntaxes: Sequence[str] = ("1.2.840.10008.1.2.1",), tls: Any = None,
               timeout_s: float = 30) -> SendLog:
    """Send files over one association with pynetdicom (raw bytes, as stored); record every status.

    ``timeout_s``: pynetdicom's ACSE, DIMSE and network timeouts. A sender whose peer is killed while it waits for a
    C-STORE response waits out the DIMSE timeout before it gives up (pynetdicom is not woken by the closed
    connection there), so a test that kills the daemon under a sender passes a shorter one."""
    from pydicom.filereader import read_file_meta_info
    from pynetdicom import _config

    # Send each file's bytes as they are (no decode and re-encode), so a broken body reaches the daemon broken.
    _config.STORE_SEND_CHUNKED_DATASET = True
    log = log if log is not None else SendLog()
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(sop_class, list(transfer_syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)
    if not assoc.is_established:
        return log
    try:
        for p in paths:
            uid = str(read_file_meta_info(p).MediaStorageSOPInstanceUID)  # survives a broken body
            if not assoc.is_established:
                log.statuses.setdefault(uid, None)
                continue
            try:
                rsp = assoc.send_c_store(p)
            except (RuntimeError, OSError, ValueError) as exc:  # the peer died mid-association
                log.statuses[uid] = None
                if "association" not in str(exc).lower() and not isinstance(exc, OSError):
                    raise
                continue
            log.statuses[uid] = int(rsp.Status) if "Status" in rsp else None
    finally:
        if assoc.is_established:
            assoc.release()
    return log


def echo(port: int, calling: str = "MODALITY", called: str = "TRIAGE_NODE", tls: Any = None) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)
    if not assoc.is_established:
        return False
    try:
        rsp = assoc.send_c_echo()
        return "Status" in rsp and int(rsp.Status) == 0
    finally:
        assoc.release()


def job_rows(d: Daemon) -> list[tuple[Any, ...]]:
    """(job id, series uid, version, state, reason) for every job."""
    return d.sql("select j.id, s.series_instance_uid, j.version, j.state, j.reason from jobs j "
                 "join series s on s.id = j.series_id order by j.id")


def results_in_orthanc(orthanc: Any) -> dict[str, Counter[str]]:
    """study UID -> number of SEG / SR instances Orthanc holds for it."""
    out: dict[str, Counter[str]] = {}
    for series in orthanc.get("/series?expand"):
        modality = series["MainDicomTags"].get("Modality", "")
        if modality not in ("SEG", "SR"):
            continue
        study = orthanc.get(f"/studies/{series['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]
        out.setdefault(study, Counter())[modality] += len(series["Instances"])
    return out


def garbage_association(port: int) -> bytes:
    """Garbage instead of an A-ASSOCIATE-RQ: the node answers with an A-ABORT (or closes) at once; returns the
    answer's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer[:1] in (b"", b"\x07"), answer[:16]
        return answer[:16]


def half_association(port: int) -> None:
    # An A-ASSOCIATE-RQ header that promises 4096 bytes, 20 of them sent, then the peer vanishes.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0x00, 4096) + b"\x00\x01\x00\x00" + b"TRIAGE_NODE     ")


__all__ = ["ROOT", "MRImageStorage"]
