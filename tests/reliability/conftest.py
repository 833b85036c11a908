"""The reliability suite's session state: one Figures object, printed and written to test-output/reliability.json;
and the receive transports its receive tests run on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from reliability_support import ROOT, Figures, patient_identity_in_logs

FIGURES = pytest.StashKey[Figures]()


def _figures(config: pytest.Config) -> Figures:
    if FIGURES not in config.stash:
        config.stash[FIGURES] = Figures()
    return config.stash[FIGURES]


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return _figures(request.config)


@pytest.fixture(params=["stock", "fast"])
def transport(request: pytest.FixtureRequest) -> str:
    """``scp.transport`` of the daemons a test starts: the tests that ask for it run on both."""
    return str(request.param)


@pytest.fixture(autouse=True)
def no_patient_identity_in_daemon_logs(figures: Figures) -> Iterator[None]:
    """After each test, the log scan: no daemon the test started wrote a patient name or ID (default level INFO),
    the hostile corpus' non-ASCII names included. Each test's own logs, so the order of the tests does not matter."""
    started = len(figures.daemon_logs)
    yield
    logs = [p for p in figures.daemon_logs[started:] if p.exists()]
    hits = patient_identity_in_logs(logs)
    figures.logs_scanned += len(logs)
    figures.phi_hits += len(hits)
    assert hits == [], "\n".join(hits[:20])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if FIGURES not in session.config.stash:
        return
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(session.config.stash[FIGURES].as_json(), indent=2) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if FIGURES not in config.stash:
        return
    f = config.stash[FIGURES]
    tr = terminalreporter
    tr.section("reliability figures")
    tr.write_line(f"kills survived: {f.kills} {dict(f.kills_by_phase)}")
    tr.write_line(f"instances acknowledged: {f.instances_acked}, stored: {f.instances_stored}, "
                  f"lost: {f.instances_lost}")
    tr.write_line(f"result sets delivered: {f.result_sets_delivered}, duplicates in the PACS: {f.duplicate_results}")
    tr.write_line(f"hostile inputs tried: {f.hostile_inputs}")
    if f.load:
        tr.write_line(f"load: {f.load}")
    if f.outage:
        tr.write_line(f"outage: {f.outage}")
    tr.write_line(f"daemon logs scanned: {f.logs_scanned}, patient names/IDs found: {f.phi_hits}")
    tr.write_line(f"written to {ROOT / 'test-output' / 'reliability.json'}")
