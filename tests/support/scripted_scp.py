"""An in-process pynetdicom Storage SCP on loopback that answers every C-STORE with a scripted status: the statuses
(0xA900, 0xA700, refused SOP classes) a real PACS does not produce on demand."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer


@dataclass
class ScriptedSCP:
    port: int
    received: list[str] = field(default_factory=list)
    proposed: list[set[str]] = field(default_factory=list)


def start_scripted_scp(
    status: int = 0x0000, contexts: tuple[str, ...] | None = None, ae_title: str = "TESTSCP"
) -> tuple[ScriptedSCP, ThreadedAssociationServer]:
    """Start the SCP on a free loopback port; ``contexts`` limits the accepted SOP classes (default: all storage)."""
    ae = AE(ae_title=ae_title)
    if contexts is None:
        ae.supported_contexts = StoragePresentationContexts
    else:
        for uid in contexts:
            ae.add_supported_context(uid)
    scp = ScriptedSCP(port=0)

    def on_store(event: evt.Event) -> int | Dataset:
        scp.received.append(str(event.request.AffectedSOPInstanceUID))
        if status == 0:
            return 0x0000
        reply = Dataset()
        reply.Status = status
        reply.ErrorComment = "test SCP refuses"
        return reply

    def on_accepted(event: evt.Event) -> None:
        scp.proposed.append({cx.abstract_syntax for cx in event.assoc.requestor.requested_contexts})

    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, on_accepted)]
    )
    scp.port = int(server.server_address[1])
    return scp, server
