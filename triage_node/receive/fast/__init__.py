"""The fast receive transport (``scp.transport: fast``): event-driven associations (``associations.py``) whose
storage-only ones read their data-transfer phase straight off the socket (``storage_phase.py``).

``associations.py`` overrides private parts of pynetdicom, so it is used only with a pynetdicom version it was
checked against (``SUPPORTED_PYNETDICOM``); with any other, :func:`request_handler` logs a WARNING and the SCP
receives on the stock transport (plain pynetdicom). To support a new version: compare the pynetdicom methods named
in ``associations.py`` with that version's, adapt them, and add it here.
"""

from __future__ import annotations

import logging

import pynetdicom
from pynetdicom.transport import RequestHandler

from triage_node.receive.fast.storage_phase import Target

log = logging.getLogger(__name__)

SUPPORTED_PYNETDICOM = frozenset({"3.0.4"})


def request_handler(target: Target) -> type[RequestHandler] | None:
    """The request handler class that makes associations fast, their storage instances handed to ``target``; None,
    with a WARNING, when the installed pynetdicom is not one ``associations.py`` supports."""
    installed = pynetdicom.__version__
    if installed not in SUPPORTED_PYNETDICOM:
        log.warning(
            "scp.transport fast supports pynetdicom %s but %s is installed: receiving on the stock transport "
            "(plain pynetdicom, slower)",
            ", ".join(sorted(SUPPORTED_PYNETDICOM)),
            installed,
        )
        return None
    from triage_node.receive.fast import associations

    return associations.request_handler(target)
