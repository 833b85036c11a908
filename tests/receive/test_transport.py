"""``scp.transport``: stock is plain pynetdicom through its public API only, fast falls back to stock with a WARNING on
a pynetdicom version it does not support, and ``scp.fast_lane`` still works as a deprecated alias."""

from __future__ import annotations

import ast
import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from peers import free_port
from pydantic import ValidationError
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import SCP
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.worklist.db import make_engine, migrate, session_factory

CT = "1.2.840.10008.5.1.4.1.1.2"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    hu, spacing = phantom_head(2, 32)
    return write_series(tmp_path / "series", hu, spacing, seed=5)


@pytest.fixture
def make_scp(tmp_path: Path) -> Iterator[object]:
    started: list[tuple[StorageSCP, object]] = []

    def make(**cfg: object) -> StorageSCP:
        # SQLite only: the subject is which transport runs (and its fallback), not the database
        engine = make_engine(f"sqlite:///{tmp_path / f'db{len(started)}.sqlite'}")
        migrate(engine)
        scp = StorageSCP(
            SCP(host="127.0.0.1", port=free_port(), **cfg),  # type: ignore[arg-type]
            Spool(tmp_path / f"spool{len(started)}"),
            session_factory(engine),
            ReceiveHooks(),
        )
        scp.start()
        started.append((scp, engine))
        return scp

    try:
        yield make
    finally:
        for scp, engine in started:
            scp.stop()
            engine.dispose()  # type: ignore[attr-defined]


def _store_on_a_plain_association(scp: StorageSCP, path: Path) -> None:
    """Store ``path`` and check the SCP served it on pynetdicom's own association and DUL classes."""
    ae = AE("TRANSPORTTEST")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="TRIAGE_NODE")
    assert assoc.is_established
    try:
        (acceptor,) = scp.ae.active_associations
        assert type(acceptor) is Association and type(acceptor.dul) is DULServiceProvider
        assert int(assoc.send_c_store(dcmread(path)).Status) == 0
    finally:
        assoc.release()


def test_stock_runs_pynetdicoms_own_associations(make_scp, series: list[Path]) -> None:  # type: ignore[no-untyped-def]
    scp = make_scp(transport="stock")
    assert scp.transport == "stock"
    _store_on_a_plain_association(scp, series[0])


def test_fast_on_an_unsupported_pynetdicom_falls_back_to_stock_with_a_warning(  # type: ignore[no-untyped-def]
    make_scp, series: list[Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "9.9.9")
    with caplog.at_level(logging.WARNING, logger="triage_node.receive.fast"):
        scp = make_scp(transport="fast")
    warnings = [r for r in caplog.records if r.name == "triage_node.receive.fast" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3.0.4" in warnings[0].getMessage() and "9.9.9" in warnings[0].getMessage()
    assert scp.transport == "stock"
    _store_on_a_plain_association(scp, series[0])


def test_fast_on_a_supported_pynetdicom_is_fast(make_scp) -> None:  # type: ignore[no-untyped-def]
    assert make_scp(transport="fast").transport == "fast"


def _stock_modules() -> list[str]:
    """The triage_node modules a stock SCP loads (in a fresh interpreter, so no other test's imports count)."""
    code = (
        "import json, sys\n"
        "import triage_node.receive.scp\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('triage_node'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return list(json.loads(out))


def _private_pynetdicom_uses(path: Path) -> list[str]:
    """Private pynetdicom names ``path`` imports, and attributes starting with ``_`` it reads off anything but
    ``self`` (every object such a module handles may be pynetdicom's)."""
    tree = ast.parse(path.read_text())
    found = []
    uses_pynetdicom = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pynetdicom":
                    uses_pynetdicom = True
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pynetdicom":
            uses_pynetdicom = True
            names = [str(node.module), *(a.name for a in node.names)]
            if any(part.startswith("_") for name in names for part in name.split(".")):
                found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
    if not uses_pynetdicom:
        return []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


def test_the_stock_transport_uses_no_private_pynetdicom_name() -> None:
    modules = _stock_modules()
    assert "triage_node.receive.scp" in modules
    assert not [m for m in modules if m.startswith("triage_node.receive.fast")]
    private = {}
    for name in modules:
        if uses := _private_pynetdicom_uses(Path(str(importlib.import_module(name).__file__))):
            private[name] = uses
    assert private == {}


def test_the_scan_finds_the_fast_transports_private_names() -> None:
    uses = _private_pynetdicom_uses(ROOT / "triage_node" / "receive" / "fast" / "associations.py")
    assert "from pynetdicom import _config, evt" in uses and any(u.endswith("._accepted_cx") for u in uses)


def test_fast_lane_is_a_deprecated_alias_of_transport(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="triage_node.config"):
        assert SCP(fast_lane=False).transport == "stock"  # type: ignore[call-arg]
        assert SCP(fast_lane=True).transport == "fast"  # type: ignore[call-arg]
    assert [r.getMessage() for r in caplog.records if r.name == "triage_node.config"] == [
        "scp.fast_lane is deprecated: use scp.transport: stock",
        "scp.fast_lane is deprecated: use scp.transport: fast",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="triage_node.config"):
        assert SCP(fast_lane=True, transport="stock").transport == "stock"  # type: ignore[call-arg]
    assert "deprecated and ignored" in caplog.text
    with pytest.raises(ValidationError, match="fast_lane: must be true or false"):
        SCP(fast_lane="sometimes")  # type: ignore[call-arg]
    assert SCP().transport == "fast"
