"""The Storage SCP: association policy (allow-list, called AE, limits, TLS), C-ECHO, and the durable C-STORE handler.

Every failure inside a handler becomes a DICOM status and one log line; nothing escapes to the association.

Associations are received on one of two transports (``scp.transport``). ``stock`` is plain pynetdicom: its public
API only (``AE.make_server`` with ``evt_handlers``; the server class overrides only ``socketserver`` hooks), so it
keeps working across pynetdicom versions. ``fast`` (``receive/fast/``) swaps in event-driven associations that read
storage straight off the socket; it relies on pynetdicom's private parts and falls back to ``stock`` on a pynetdicom
version it does not support. Both hand every instance to :meth:`StorageSCP.store`.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pynetdicom import AE, Association, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import AssociationServer, RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import SCP, Caller
from triage_node.receive.contexts import (
    PREFERENCE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    STORAGE_SOP_CLASSES,
    VERIFICATION_SOP_CLASS,
)
from triage_node.receive.header import Refused, file_meta_prefix, parse_header
from triage_node.receive.records import GroupCommitter, Pending, Recorded
from triage_node.receive.spool import Incoming, Spool

log = logging.getLogger(__name__)

# Never matches a real AE title (16 characters at most): rejects a caller whose host is not allowed.
_NOBODY = "\x00no-caller-allowed-from-this-host"


class PolicyAE(AE):
    """An AE whose calling-AE allow-list depends on the peer's address.

    pynetdicom checks ``require_calling_aet`` in the association's own thread while negotiating; answering per thread
    lets an allow-list entry pin an AE title to a host and still yields a standard A-ASSOCIATE-RJ
    (calling AE title not recognised).
    """

    def __init__(self, ae_title: str, callers: tuple[Caller, ...]):
        super().__init__(ae_title)
        self.callers = callers

    @property
    def require_calling_aet(self) -> list[str]:
        if not self.callers:
            return []
        thread = threading.current_thread()
        host = thread.requestor.address if isinstance(thread, Association) else None
        titles = [c.ae_title for c in self.callers if c.host is None or c.host == host]
        return titles or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        self.callers = tuple(Caller(ae_title=t) for t in ae_titles)


class NoDelayServer(ThreadedAssociationServer):
    """Sets TCP_NODELAY on accepted sockets: without it each C-STORE response waits ~40 ms for delayed ACKs. TLS
    handshakes are left to the association threads.

    Made by ``AE.make_server``, not ``AE.start_server``: the server class ``start_server`` makes is fixed, and it
    runs TLS handshakes in its one acceptor thread, where a silent peer would block every later association."""

    def shutdown(self) -> None:
        """Stop serving and close the socket. (pynetdicom's own ``shutdown`` also drops the server from the AE's
        list of the servers ``start_server`` made, which this one is not in.)"""
        super(AssociationServer, self).shutdown()
        self.server_close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = self.socket.accept()  # type: ignore[union-attr]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            # The handshake must not run here, in the one acceptor thread: a peer that connects and stays silent
            # would block every later association. Deferred, it runs on the association's first read, in its thread.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address


class ReusePortServer(NoDelayServer):
    """Binds with SO_REUSEPORT (``scp.reuse_port``): several receive processes listen on one port and the kernel
    spreads the incoming associations over them, so ingest uses every core."""

    def server_bind(self) -> None:  # pynetdicom's own server_bind ignores allow_reuse_port
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # type: ignore[union-attr]
        super().server_bind()


@dataclass
class ReceiveHooks:
    """What the receive path calls besides storage; all optional so tests can run the bare SCP."""

    disk_ok: Callable[[], bool] = lambda: True
    on_stored: Callable[[int, int], None] = lambda nbytes, series_id: None
    on_complete: Callable[[], None] = lambda: None
    on_refused: Callable[[int], None] = lambda status: None
    on_association: Callable[[bool], None] = lambda accepted: None
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))


def make_ssl_context(cfg: SCP) -> ssl.SSLContext | None:
    tls = cfg.tls
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    if tls.require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_OPTIONAL if tls.ca_file else ssl.CERT_NONE
    return ctx


class StorageSCP:
    """Owns the AE and its server thread. ``start()`` binds and listens on the configured transport; ``stop()``
    refuses new associations and waits for in-flight ones to finish."""

    def __init__(self, cfg: SCP, spool: Spool, sessions: sessionmaker[Session], hooks: ReceiveHooks | None = None):
        self.cfg = cfg
        self.spool = spool
        self.sessions = sessions
        self.hooks = hooks or ReceiveHooks()
        self.server: ThreadedAssociationServer | None = None
        self.ae = self._make_ae(cfg)
        self.transport: str | None = None  # the one start() chose: scp.transport, or stock when fast cannot run
        self.committer = GroupCommitter(sessions, self.hooks.clock)

    def _make_ae(self, cfg: SCP) -> PolicyAE:
        ae = PolicyAE(cfg.ae_title, cfg.allowed_callers)
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.max_pdu
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = cfg.require_called_ae
        syntaxes = list(PREFERENCE)
        for uid in STORAGE_SOP_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(VERIFICATION_SOP_CLASS, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
        return ae

    def reload_policy(self, cfg: SCP) -> None:
        """Apply a new allow-list (takes effect for the next association)."""
        self.ae.callers = cfg.allowed_callers
        self.cfg = cfg

    def start(self, extra_handlers: Sequence[tuple[Any, ...]] = ()) -> None:
        """Bind and listen. ``extra_handlers``: more pynetdicom event bindings (e.g. Storage Commitment reports)."""
        handlers = [
            *extra_handlers,
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        self.committer.start()
        self.server = self.ae.make_server(
            (self.cfg.host, self.cfg.port),
            evt_handlers=handlers,
            ssl_context=make_ssl_context(self.cfg),
            server_class=ReusePortServer if self.cfg.reuse_port else NoDelayServer,
            request_handler=self._request_handler(),
        )
        # socketserver checks for shutdown() once per poll interval (0.5 s by default): a stop waits at most 0.1 s.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, name="scp-acceptor", daemon=True
        )
        self._thread.start()
        log.info(
            "SCP %s listening on %s:%d (max %d associations, %s, %s transport)",
            self.cfg.ae_title,
            self.cfg.host,
            self.port,
            self.cfg.max_associations,
            "TLS" if self.cfg.tls.enabled else "no TLS",
            self.transport,
        )
        if not self.cfg.allowed_callers:
            log.warning("scp.allowed_callers is empty: associations from any calling AE title are accepted")

    def _request_handler(self) -> type[RequestHandler] | None:
        """The fast transport's request handler, or None for pynetdicom's own (stock, or fast falling back to it)."""
        handler = None
        if self.cfg.transport == "fast":
            from triage_node.receive import fast
            from triage_node.receive.fast.storage_phase import Target

            handler = fast.request_handler(Target(self.store, lambda: self.spool.incoming()))
        self.transport = "stock" if handler is None else "fast"
        return handler

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server else self.cfg.port

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop listening, then wait for running associations (in-flight C-STOREs) to end."""
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        for assoc in list(self.ae.active_associations):
            # Only an established association can have a C-STORE in flight. One that never got there (a peer that
            # sent garbage or half a request) waits in pynetdicom for scp.acse_timeout_s; its thread is a daemon
            # thread, and an instance that arrives on it after this point is refused by the stopped committer.
            if assoc.is_established:
                assoc.join(timeout=timeout_s)
        self.committer.stop(timeout_s)
        self.server = None

    # -- handlers ------------------------------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_accepted(self, event: evt.Event) -> None:
        self.hooks.on_association(True)
        log.info(
            "association accepted from %s (%s:%s)",
            event.assoc.requestor.ae_title,
            event.assoc.requestor.address,
            event.assoc.requestor.port,
        )

    def _on_rejected(self, event: evt.Event) -> None:
        self.hooks.on_association(False)
        rq = event.assoc.requestor
        # The title the peer called is in its A-ASSOCIATE-RQ; the acceptor's primitive is our A-ASSOCIATE-RJ.
        request, reply = rq.primitive, event.assoc.acceptor.primitive
        called = str(request.called_ae_title).strip() if request is not None else "?"
        calling = str(rq.ae_title).strip()
        log.warning(
            "association rejected: calling AE %r from %s, called AE %r: %s",
            calling,
            rq.address,
            called,
            self._rejection_reason(reply, calling, called, rq.address),
        )

    def _rejection_reason(self, reply: Any, calling: str, called: str, address: str) -> str:
        """The one reason pynetdicom sent (the last check that failed decides the A-ASSOCIATE-RJ), in words."""
        rsd = (reply.result, reply.result_source, reply.diagnostic) if reply is not None else None
        if rsd == (0x01, 0x01, 0x07):
            return f"called AE title {called!r} is not ours ({self.cfg.ae_title!r})"
        if rsd == (0x01, 0x01, 0x03):
            if any(c.ae_title == calling for c in self.cfg.allowed_callers):
                return f"calling AE title {calling!r} is not in scp.allowed_callers for address {address}"
            return f"calling AE title {calling!r} is not in scp.allowed_callers"
        if rsd == (0x02, 0x03, 0x02):
            return f"association limit reached (scp.max_associations {self.cfg.max_associations})"
        if rsd == (0x02, 0x02, 0x01):
            return "user identity negotiation failed"
        return f"result {rsd}" if rsd else "no reason recorded"

    def _on_store(self, event: evt.Event) -> int:
        """pynetdicom's EVT_C_STORE: every C-STORE on the stock transport; on the fast one, those of associations its
        storage phase does not serve."""
        request = cast(C_STORE, event.request)  # this handler is bound to EVT_C_STORE only
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        sop_class = str(request.AffectedSOPClassUID or "")
        context = event.context
        transfer_syntax = str(context.transfer_syntax)
        # = event.encoded_dataset(include_meta=True), without a pydicom file meta dataset per instance
        prefix = file_meta_prefix(sop_class, sop_uid, transfer_syntax)
        data = memoryview(prefix + cast(BytesIO, request.DataSet).getvalue())
        return self.store(
            event.assoc.requestor.ae_title,
            sop_class,
            sop_uid,
            str(context.abstract_syntax),
            transfer_syntax,
            data,
            len(prefix),
        )

    def store(
        self,
        calling: str,
        sop_class_uid: str,
        sop_uid: str,
        context_abstract_syntax: str,
        transfer_syntax: str,
        data: memoryview,
        prefix_len: int,
        incoming: Incoming | None = None,
    ) -> int:
        """Make one received instance durable (file fsynced, folder entry and row committed) and return the C-STORE
        status; any failure becomes a status and one log line. ``data`` is the file meta then the data set;
        ``incoming``, when given, already holds them (hashed and written while they arrived)."""
        try:
            if incoming is None:
                incoming = self.spool.incoming()
                incoming.add(data)
            if not self.hooks.disk_ok():
                raise Refused(STATUS_OUT_OF_RESOURCES, "spool disk below the configured free-space minimum")
            header = parse_header(data, context_abstract_syntax, sop_uid or None, transfer_syntax, prefix_len)
            digest = incoming.hexdigest()
            rel = self.spool.relative_path(header, digest)
            # The file and its folder entry are made durable here, in this association's thread (in parallel with
            # other associations); the committer commits its row, shared with whatever else is waiting.
            self.committer.announce()
            try:
                incoming.keep(rel)
            except BaseException:
                self.committer.withdraw()
                raise
            incoming = None
            rec = self.committer.commit(Pending(header, rel, len(data), digest, calling), announced=True)
            self._log_stored(rec, header.sop_instance_uid, header.series_uid)
            self.hooks.on_stored(len(data), rec.series_id)
            if rec.complete_by_count:
                self.hooks.on_complete()
            return STATUS_SUCCESS
        except Refused as exc:
            self.hooks.on_refused(exc.status)
            log.warning(
                "C-STORE of %s from %s refused with 0x%04X: %s", sop_uid or "?", calling, exc.status, exc.reason
            )
            return exc.status
        except OSError as exc:
            self.hooks.on_refused(STATUS_OUT_OF_RESOURCES)
            log.error("C-STORE of %s from %s: cannot write the spool (%s): 0xA700", sop_uid, calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except OperationalError as exc:
            self.hooks.on_refused(STATUS_OUT_OF_RESOURCES)
            log.error("C-STORE of %s from %s: database unavailable (%s): 0xA700", sop_uid, calling, exc.orig)
            return STATUS_OUT_OF_RESOURCES
        except (SQLAlchemyError, ValueError, TypeError, AttributeError, KeyError) as exc:
            self.hooks.on_refused(STATUS_PROCESSING_FAILURE)
            log.exception("C-STORE of %s from %s failed: 0x0110 (%s)", sop_uid, calling, type(exc).__name__)
            return STATUS_PROCESSING_FAILURE
        except Exception as exc:
            self.hooks.on_refused(0xC211)
            log.exception("C-STORE of %s from %s failed: 0xC211 (%s)", sop_uid, calling, type(exc).__name__)
            return 0xC211
        finally:
            if incoming is not None:  # refused or failed before its file was kept
                incoming.discard()

    @staticmethod
    def _log_stored(rec: Recorded, sop_uid: str, series_uid: str) -> None:
        if rec.duplicate:
            log.debug("instance %s received again with identical bytes: kept the stored copy", sop_uid)
        elif rec.new_version:
            log.warning(
                "instance %s received again with different bytes: stored as a new version (newest wins)", sop_uid
            )
        elif rec.reopened:
            log.info("late instance %s reopened completed series %s", sop_uid, series_uid)
        else:
            log.debug("stored %s", sop_uid)
