"""Event-driven acceptor associations for pynetdicom: the same state machine, ACSE and DIMSE code, without polling.

pynetdicom 3.0.4 runs two threads per association that poll: the DUL thread (``dul.py`` ``run_reactor``) sleeps
``_run_loop_delay`` (1 ms) whenever a loop found nothing to do, and the acceptor reactor (``association.py``
``_run_reactor``) sleeps 1 ms per loop. Every C-STORE round trip therefore waits for several of these sleeps, and
both threads burn CPU between them. Here the DUL thread blocks in ``select()`` on its socket and a wake-up
socketpair that is written whenever another thread queues something for it, and the association thread blocks on an
event that is set whenever the DUL hands it a DIMSE message or an ACSE primitive (release, abort) or stops. Both
still wake on their timers: ARTIM for the DUL, the network (idle) timeout for the association.

This overrides private methods and reads private attributes of pynetdicom: import it only through
``triage_node.receive.fast``, which checks the installed pynetdicom version against the ones this module supports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from typing import Any, TypeVar, cast

from pynetdicom import _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE, DimsePrimitiveType
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StatusType, StorageServiceClass, VerificationServiceClass, attempt
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import AssociationSocket, RequestHandler

from triage_node.receive.fast.storage_phase import C_STORE_RSP, Context, StoragePhase, Target, encode_response
from triage_node.receive.header import file_meta_prefix

log = logging.getLogger(__name__)

# The longest either thread blocks without any event: a safety net only, every wake-up that matters is signalled.
MAX_BLOCK_S = 1.0

# A timer has expired only once its remaining time is below zero: wake just after, not exactly at, the deadline.
TIMER_SLACK_S = 0.002

_T = TypeVar("_T")


class _Waker:
    """A socketpair that wakes a thread blocked in ``select()``. Written only while that thread is about to block
    (``armed``), so queueing costs no system call while the thread is busy."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.armed = False

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        if self.armed:
            with contextlib.suppress(BlockingIOError, OSError):  # full (already woken) or closed (thread ended)
                self._w.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._r.recv(4096):
                pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


class _WakingQueue(queue.Queue[_T]):
    """A queue that calls ``on_put`` after every put, to wake whoever waits for it elsewhere than in ``get``."""

    def __init__(self, on_put: Callable[[], None]):
        super().__init__()
        self._on_put = on_put

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()


class RecvIntoSocket(AssociationSocket):
    """pynetdicom's socket wrapper reading a PDU with ``recv_into`` one buffer, instead of 4096-byte ``recv`` calls
    appended to a bytearray (128 calls and copies per 512 KB image)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if not n:  # connection closed: return what arrived, as pynetdicom does
                del view
                del buf[got:]
                return buf
            got += n
        return buf


def encode_store_response(rsp: C_STORE) -> bytes:
    """The command set of a C-STORE-RSP without optional status elements, in Implicit VR Little Endian (PS3.7 9.3.1.2,
    E.1): what pynetdicom's DIMSEMessage makes through a pydicom Dataset, for a fraction of the CPU (the storage phase's
    encoder, from the primitive)."""
    return encode_response(
        C_STORE_RSP,
        int(cast(int, rsp.MessageIDBeingRespondedTo)),
        int(cast(int, rsp.Status)),
        str(rsp.AffectedSOPClassUID or ""),
        str(rsp.AffectedSOPInstanceUID or ""),
    )


class FastStoreDIMSE(DIMSEServiceProvider):
    """Sends plain C-STORE responses (a status, no error comment or offending element) from bytes built directly;
    everything else goes through pynetdicom. EVT_DIMSE_SENT is triggered only when a handler other than
    pynetdicom's debug logger is bound (none is in triage-node)."""

    def send_msg(self, primitive: DimsePrimitiveType, context_id: int) -> None:
        if (
            type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not self._dimse_sent_observed()
        ):
            command = encode_store_response(primitive)
            limit = self.maximum_pdu_size
            if limit == 0 or len(command) + 6 <= limit:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # last command fragment
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)

    def _dimse_sent_observed(self) -> bool:
        handlers = self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        return any(h[0] is not standard_dimse_sent_handler for h in cast(list[tuple[Any, Any]], handlers))


class SelectDUL(DULServiceProvider):
    """pynetdicom's DUL provider, blocking in ``select()`` instead of sleeping 1 ms when idle.

    The loop body is pynetdicom 3.0.4's ``run_reactor``; only its sleep is replaced. The thread wakes for: data on the
    socket, a primitive queued to send (``to_provider_queue``), an event queued by another thread (``event_queue``), a
    kill request (``_kill_thread``), and the ARTIM timer's expiry.
    """

    def __init__(self, assoc: Association, wake_user: Callable[[], None], target: Target):
        self._waker = _Waker()  # before super().__init__, which sets _kill_thread
        self.target = target
        super().__init__(assoc)
        self.phase: StoragePhase | None = None  # set once the data-transfer phase runs on receive/fast/storage_phase.py
        self.phase_outcome: str | None = None
        self._phase_checked = False
        self.event_queue = _WakingQueue(self._waker.wake)
        self.to_provider_queue = _WakingQueue(self._waker.wake)
        self.to_user_queue = _WakingQueue(wake_user)
        self._wake_user = wake_user

    @property
    def _kill_thread(self) -> bool:
        return self._kill_flag

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._kill_flag = value
        if value:
            self._waker.wake()

    def _block(self) -> None:
        """Wait until there may be something to do (see the class docstring)."""
        timeout = MAX_BLOCK_S
        artim = self.artim_timer
        if artim.timeout is not None and artim._start_time is not None and artim._end_time is None:
            timeout = min(timeout, max(0.0, artim.remaining) + TIMER_SLACK_S)
        fds: list[Any] = [self._waker]
        wrapper = self.socket
        sock = wrapper.socket if wrapper is not None and wrapper._is_connected else None
        if sock is not None:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes already buffered: select() would not see them
            fds.append(sock)
        self._waker.armed = True
        try:
            # Re-check after arming: whatever was queued before this point did not write to the waker.
            if self._kill_flag or not self.event_queue.empty() or not self.to_provider_queue.empty():
                return
            select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return  # the socket was closed under us: the loop's own check (``socket.ready``) reports Evt17
        finally:
            self._waker.armed = False
            self._waker.drain()

    def run_reactor(self) -> None:
        try:
            self._run()
        finally:
            if self.assoc.is_acceptor and self.assoc.requestor.primitive is None:
                # Ended before any A-ASSOCIATE-RQ arrived (a failed TLS handshake, garbage, a closed connection):
                # the association thread waits for one for up to acse_timeout; None ends that wait now.
                self.to_user_queue.put(None)  # type: ignore[arg-type]
            self._wake_user()  # the association thread checks ``dul.is_alive()``
            self._waker.close()

    def _run(self) -> None:
        # pynetdicom 3.0.4 dul.py run_reactor(), with time.sleep(self._run_loop_delay) replaced by self._block().
        self._idle_timer.start()
        sock = cast(AssociationSocket, self.socket)
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._block()
            if self._kill_flag:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in the DUL reactor, aborting the association: %r", exc)
                from pynetdicom.pdu import A_ABORT_RQ

                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                with contextlib.suppress(OSError):
                    sock.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_flag = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False
            if self.state_machine.current_state == "Sta6" and not self._phase_checked:
                self._phase_checked = True  # the A-ASSOCIATE-AC has just been sent
                phase = storage_phase_for(
                    self.assoc, self.target, self._waker, lambda: self._kill_flag or bool(self.assoc._kill)
                )
                if phase is not None:
                    self._run_phase(phase)
                    return

    def _run_phase(self, phase: StoragePhase) -> None:
        """Serve the data-transfer phase on ``phase`` (this thread), then end as pynetdicom's DUL ends in Sta1."""
        self.phase = phase
        self._wake_user()  # the association thread stops watching this DUL's queues and timers
        self._waker.armed = True  # queued primitives (an abort from the association) wake the phase's select()
        try:
            self.phase_outcome = phase.run()
        finally:
            self._waker.armed = False
            self.state_machine.transition("Sta1")
            self._kill_flag = True

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            if threading.current_thread() is not self:
                self.join()
            return True
        return False


# Events whose handlers see PDUs or DIMSE messages: an association where any is bound (other than pynetdicom's
# debug loggers) stays on pynetdicom's path, where they are triggered.
_OBSERVING_EVENTS = (
    evt.EVT_PDU_RECV,
    evt.EVT_PDU_SENT,
    evt.EVT_DIMSE_RECV,
    evt.EVT_DIMSE_SENT,
    evt.EVT_DATA_RECV,
    evt.EVT_DATA_SENT,
    evt.EVT_FSM_TRANSITION,
)


def storage_phase_for(
    assoc: Association, target: Target, waker: _Waker, should_stop: Callable[[], bool]
) -> StoragePhase | None:
    """A :class:`StoragePhase` handing ``assoc``'s instances to ``target`` when every accepted context is a Storage
    SOP class or Verification with this node as SCP and no extended negotiation; None keeps pynetdicom's path."""
    if _config.UNRESTRICTED_STORAGE_SERVICE or assoc.acceptor.accepted_common_extended:
        return None
    contexts = {}
    for cx_id, cx in assoc._accepted_cx.items():
        service = uid_to_service_class(cast(str, cx.abstract_syntax))
        if service not in (StorageServiceClass, VerificationServiceClass) or not cx.as_scp or not cx.transfer_syntax:
            return None
        contexts[cx_id] = Context(
            str(cx.abstract_syntax), str(cx.transfer_syntax[0]), storage=service is StorageServiceClass
        )
    for event in _OBSERVING_EVENTS:
        handlers = cast(list[tuple[Any, Any]], assoc.get_handlers(event))
        if any(not getattr(h[0], "__module__", "").startswith("pynetdicom._handlers") for h in handlers):
            return None
    sock = cast(AssociationSocket, assoc.dul.socket).socket
    if sock is None:
        return None
    return StoragePhase(
        sock,
        contexts,
        calling_ae=str(assoc.requestor.ae_title),
        peer_max_pdu=int(assoc.requestor.maximum_length or 0),
        target=target,
        make_prefix=file_meta_prefix,
        network_timeout=assoc.network_timeout,
        wake_fd=waker._r,
        should_stop=lambda: should_stop() or bool(assoc.dul.to_provider_queue.queue),
    )


class LeanStorageSCP(StorageServiceClass):
    """pynetdicom 3.0.4's ``StorageServiceClass.SCP`` with the response's UIDs copied from the request as they are.

    The request's UIDs were validated when its command set was decoded; pynetdicom validates them again (a pydicom
    ``UID`` and its regular expression each) when it builds the response, which cost more CPU per instance than
    writing the response. Everything else is pynetdicom's: the handler call, its exception handling (0xC211) and
    the status check."""

    def SCP(self, req: C_STORE, context: PresentationContext) -> None:
        rsp = C_STORE()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp._affected_sop_instance_uid = req._affected_sop_instance_uid
        rsp._affected_sop_class_uid = req._affected_sop_class_uid
        cx_id = cast(int, context.context_id)
        with attempt(rsp, self.dimse, cx_id, self.assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_STORE'"
            ctx.error_status = 0xC211
            rsp_status = evt.trigger(ctx.assoc, evt.EVT_C_STORE, {"request": req, "context": context.as_tuple})
            if req._dataset_file:  # only with STORE_RECV_CHUNKED_DATASET, which triage-node does not set
                req._dataset_file.close()
                with contextlib.suppress(OSError):
                    os.unlink(req._dataset_file.name)
        if not ctx.success or not self.assoc.is_established:
            return
        rsp = self.validate_status(cast(StatusType, rsp_status), rsp)
        self.dimse.send_msg(rsp, cx_id)


class EventAssociation(Association):
    """An acceptor association whose reactor blocks until the DUL hands it something (see the module docstring)."""

    def __init__(self, ae: Any, mode: str, target: Target):
        self._wake = threading.Event()
        super().__init__(ae, mode)
        self.dul = SelectDUL(self, self._wake.set, target)
        # Association.__init__ applied these to the DUL it made; apply them to this one.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse = FastStoreDIMSE(self)
        self.dimse.msg_queue = _WakingQueue(self._wake.set)

    def kill(self) -> None:
        self._wake.set()
        super().kill()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """Plain C-STORE requests go to :class:`LeanStorageSCP`; everything else (and every unusual case: release
        under way, invalid request, unknown context, extended negotiation) to pynetdicom's own ``_serve_request``."""
        if (
            type(msg) is not C_STORE
            or self._sent_release
            or _config.UNRESTRICTED_STORAGE_SERVICE
            or context_id not in self._accepted_cx
            or self.acceptor.accepted_common_extended
            or not msg.is_valid_request
            or uid_to_service_class(cast(str, msg.AffectedSOPClassUID)) is not StorageServiceClass
        ):
            super()._serve_request(msg, context_id)
            return
        try:
            self.dimse.cancel_req = {}
            self._is_paused = True
            LeanStorageSCP(self).SCP(msg, self._accepted_cx[context_id])
            self._is_paused = False
            self.dimse.cancel_req = {}
        except Exception as exc:
            log.exception("C-STORE service failed, aborting the association: %r", exc)
            self.abort()

    def _follow_phase(self) -> None:
        """The DUL thread serves the data-transfer phase itself (``storage_phase.py``): wait for it to end, then
        record how the association ended as pynetdicom does."""
        dul = cast(SelectDUL, self.dul)
        while dul.is_alive():
            dul.join(MAX_BLOCK_S)
        self.is_established = False
        if dul.phase_outcome == "released":
            log.debug("association released by the peer")
            self.is_released = True
            evt.trigger(self, evt.EVT_RELEASED, {})
        elif not self._sent_abort:  # abort() triggered EVT_ABORTED already
            self.is_aborted = True
            evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()

    def _idle_wait(self) -> float:
        timer = self.dul._idle_timer
        if timer.timeout is None:
            return MAX_BLOCK_S
        return min(MAX_BLOCK_S, max(0.0, timer.remaining) + TIMER_SLACK_S)

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 association.py _run_reactor(), with time.sleep(0.001) replaced by a wait on self._wake.
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self._wake.clear()  # before the checks: anything arriving after them sets it again
            if cast(SelectDUL, self.dul).phase is not None:
                self._follow_phase()
                return

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            # The ACSE checks peek at to_user_queue (raising IndexError inside when it is empty): only when it is not.
            acse_pending = bool(self.dul.to_user_queue.queue)
            if acse_pending and self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("association released by the peer")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if acse_pending and self.acse.is_aborted():
                log.info("association aborted%s", " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("network timeout (%s s without data): aborting the association", self.network_timeout)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

            if not msg:
                self._wake.wait(self._idle_wait())


class EventRequestHandler(RequestHandler):
    """pynetdicom 3.0.4's RequestHandler making an :class:`EventAssociation` instead of an ``Association``; a subclass
    names the ``target`` its storage associations hand instances to (:func:`request_handler`)."""

    target: Target

    def _create_association(self) -> Association:
        assoc = EventAssociation(self.ae, MODE_ACCEPTOR, self.target)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.strftime(datetime.now(), '%Y%m%d%H%M%S')}"
        sock = RecvIntoSocket(assoc, client_socket=self.request)
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    handler = cast(evt._HandlerBase, handler)
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def request_handler(target: Target) -> type[RequestHandler]:
    """The request handler class for ``AE.make_server``: event-driven associations whose storage-only ones hand
    their instances to ``target``."""
    return type("TargetRequestHandler", (EventRequestHandler,), {"target": target})
