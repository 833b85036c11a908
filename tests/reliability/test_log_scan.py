"""The log scan every reliability test ends with (conftest) finds what it looks for, and only that."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import patient_identity_in_logs

pytestmark = pytest.mark.reliability


def test_the_log_scan_finds_patient_names_and_ids(tmp_path: Path) -> None:
    log = tmp_path / "d" / "logs" / "daemon.log"
    log.parent.mkdir(parents=True)
    log.write_text("job 1 done\nstudy of SYNTH^PATIENT0042 stored\npatient SYN0000042\nreferred by Müller\n")
    assert patient_identity_in_logs([log]) == [
        "d/daemon.log:2: SYNTH^PATIENT0042", "d/daemon.log:3: SYN0000042", "d/daemon.log:4: Müller",
    ]
    log.write_text("job 1 done: 6 kept / 0 dropped slices, priority none\n")
    assert patient_identity_in_logs([log]) == []
