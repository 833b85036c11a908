"""The log scan: no daemon the suite started wrote a patient name or ID (default level INFO).

It runs last (conftest moves it) and reads every daemon log of the session, including the hostile corpus' non-ASCII
names. Run alone it has nothing to scan and says so.
"""

from __future__ import annotations

import pytest
from reliability_support import PHI_PATTERNS, Figures

pytestmark = pytest.mark.reliability


def test_no_patient_identity_in_any_daemon_log(figures: Figures) -> None:
    logs = [p for p in figures.daemon_logs if p.exists()]
    if not logs:
        pytest.skip("no daemon ran in this session (run the whole reliability suite)")
    hits = []
    for path in logs:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            hits += [f"{path.parent.parent.name}/{path.name}:{n}: {m.group(0)}" for pat in PHI_PATTERNS
                     for m in [pat.search(line)] if m]
    figures.logs_scanned += len(logs)
    figures.phi_hits += len(hits)
    assert hits == [], "\n".join(hits[:20])
