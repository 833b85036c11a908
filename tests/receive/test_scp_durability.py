"""The durability contract under group commit: four associations send at once, the daemon is SIGKILLed mid-transfer;
every instance that got a success status is in the database with its exact bytes in the spool, nothing is there
twice, and a full resend completes the series once."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from peers import make_daemon, storescu, wait_for
from pydicom import dcmread
from pynetdicom import AE

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head

# SQLite only: a daemon kill per transport; PostgreSQL's receiver kill is test_multinode's, group commit test_store's
CT = "1.2.840.10008.5.1.4.1.1.2"
NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}


def _send_all(port: int, paths: list[Path], acked: list[str]) -> None:
    """Send with pynetdicom, recording each SOP Instance UID the SCP answered with success; stops when the peer dies."""
    ae = AE("PARALLEL")
    ae.dimse_timeout = 10  # a sender the kill leaves waiting for a response gives up after this (the default is 30 s)
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE_NODE")
    if not assoc.is_established:
        return
    try:
        for p in paths:
            ds = dcmread(p)
            status = assoc.send_c_store(ds)
            if not assoc.is_established or "Status" not in status:
                return
            if int(status.Status) == 0:
                acked.append(str(ds.SOPInstanceUID))
    finally:
        if assoc.is_established:
            assoc.release()


def test_sigkill_during_four_parallel_transfers_keeps_every_acknowledged_instance(tmp_path, transport) -> None:  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(160, 96)
    paths = write_series(tmp_path / "s", hu, spacing, seed=31)
    pixels = {str(ds.SOPInstanceUID): ds.PixelData for ds in (dcmread(p) for p in paths)}
    d = make_daemon(tmp_path / "d", **NO_MODELS, TRIAGE_NODE__SCP__TRANSPORT=transport).start()
    try:
        acked: list[str] = []
        threads = [threading.Thread(target=_send_all, args=(d.port, paths[i::4], acked)) for i in range(4)]
        for t in threads:
            t.start()
        # Each of the 4 associations has at most one instance committed but not yet answered when the kill lands,
        # so 24 rows mean at least 20 successes reached the senders.
        wait_for(lambda: d.sql("select count(*) from instances")[0][0] >= 24, timeout=60, interval=0.01)
        d.kill()
        for t in threads:
            t.join(timeout=60)
        assert len(acked) >= 20  # usually fewer than all: the kill lands mid-transfer

        d.start()
        rows = {
            str(uid): (str(path), int(size), str(sha))
            for uid, path, size, sha in d.sql("select sop_instance_uid, path, size, sha256 from instances")
        }
        assert len(rows) == d.sql("select count(*) from instances")[0][0]  # nothing twice
        for uid in acked:  # every success is on disk, complete
            path, size, sha = rows[uid]
            data = (d.spool / path).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
            assert dcmread(d.spool / path).PixelData == pixels[uid]
        assert not list(d.spool.rglob("*.tmp"))

        storescu(d.port, paths[0].parent)
        wait_for(lambda: d.sql("select state from jobs") == [("delivered",)], timeout=60, what="one finished job")
        assert d.sql("select count(*), count(distinct sop_instance_uid) from instances") == [(160, 160)]
        assert d.sql("select received_instances, version from series") == [(160, 1)]
    finally:
        d.stop()
