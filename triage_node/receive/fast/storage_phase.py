"""The data-transfer phase of a storage association, read straight off the socket (PS3.8 9.3.5, PS3.7 9.3.1).

pynetdicom negotiates every association (ACSE, presentation contexts, roles, user identity, the allow-list). Once
an association is established and every accepted context is a Storage or the Verification SOP class, the only
messages that may follow are C-STORE, C-ECHO and C-CANCEL requests, A-RELEASE and A-ABORT. For those, pynetdicom's
general machinery (a primitive object per PDU, a DIMSE message assembled in a ``BytesIO``, two threads handing each
message to each other, an event object per request) cost several times the CPU of the work itself. Here one thread
per association reads each PDU header and each PDV item header, receives the data set's fragments with
``recv_into`` directly at their place in one buffer behind the file meta, hands the complete instance to the store
function (which makes it durable) and writes the C-STORE-RSP PDU itself.

Anything outside that short list (another DIMSE command, an unexpected PDU type, a malformed PDU) aborts the
association with an A-ABORT and one log line, as PS3.8 requires for a protocol error; the SCP serves everything
else. Associations with any other accepted context (Storage Commitment reports) stay on pynetdicom's path.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
NO_DATA_SET = 0x0101
PDU_P_DATA, PDU_RELEASE_RQ, PDU_RELEASE_RP, PDU_ABORT = 0x04, 0x05, 0x06, 0x07

# A PDU longer than this is refused whatever the negotiated maximum (0 means "no limit" in DICOM): a corrupt length
# field must not make the SCP allocate gigabytes.
MAX_PDU_BYTES = 256 * 1024 * 1024
# The data set buffer is kept between instances of an association; above this it is given back after each one.
KEEP_BUFFER_BYTES = 64 * 1024 * 1024
INITIAL_BUFFER_BYTES = 1024 * 1024
# A command set is a few hundred bytes: anything far larger is not one.
MAX_COMMAND_BYTES = 64 * 1024
# The longest the thread blocks without checking for a kill request while it waits for the next PDU.
MAX_BLOCK_S = 1.0

ABORT_UNEXPECTED_PDU = 2  # A-ABORT reason (source 2, service provider): unexpected PDU
ABORT_UNRECOGNIZED_PDU = 1
ABORT_INVALID_PARAMETER = 6
ABORT_NOT_SPECIFIED = 0


class Sink(Protocol):
    """Where an instance's bytes go while they arrive (``store.Incoming``: hashed and written to a temporary file)."""

    def add(self, data: memoryview) -> None: ...

    def discard(self) -> None: ...


class StoreFunction(Protocol):
    """Makes one received instance durable and returns the C-STORE status (never raises for bad input).

    ``data`` holds the file meta (``prefix_len`` bytes) and then the data set as it arrived; it is only valid for
    the duration of the call. ``sink`` received the same bytes; the store function keeps or discards it."""

    def __call__(
        self,
        calling_ae: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        context_abstract_syntax: str,
        transfer_syntax: str,
        data: memoryview,
        prefix_len: int,
        sink: Any,
        /,
    ) -> int: ...


@dataclass(frozen=True)
class Target:
    """What the storage phase hands instances to: the SCP's store function and a factory of sinks."""

    store: StoreFunction
    open_sink: Callable[[], Sink]


class ProtocolError(Exception):
    """The peer broke the upper layer protocol: the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU):
        super().__init__(message)
        self.reason = reason


class IdleTimeout(ProtocolError):
    """No PDU for the network timeout (already logged where it was detected)."""


class Closed(Exception):
    """The peer closed the connection."""


@dataclass(frozen=True)
class Context:
    abstract_syntax: str
    transfer_syntax: str
    storage: bool  # else Verification


@dataclass
class Command:
    field: int
    message_id: int | None
    sop_class_uid: str
    sop_instance_uid: str
    data_set_type: int


def parse_command(raw: bytes | bytearray) -> Command:
    """The elements of a DIMSE command set this SCP uses (Implicit VR Little Endian, group 0000)."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError("malformed command set", ABORT_INVALID_PARAMETER)
        values[elem] = bytes(raw[pos : pos + length])
        pos += length
    if pos != end:
        raise ProtocolError("malformed command set", ABORT_INVALID_PARAMETER)

    def us(elem: int) -> int | None:
        value = values.get(elem)
        return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None

    def ui(elem: int) -> str:
        return values.get(elem, b"").decode("ascii", errors="replace").rstrip("\0 ")

    field = us(0x0100)
    data_set_type = us(0x0800)
    if field is None or data_set_type is None:
        raise ProtocolError("command set without CommandField or CommandDataSetType", ABORT_INVALID_PARAMETER)
    return Command(field, us(0x0110), ui(0x0002), ui(0x1000), data_set_type)


def _ui(elem: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return struct.pack("<HHI", 0, elem, len(raw)) + raw


def _us(elem: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0, elem, 2, value)


def encode_response(field: int, message_id: int, status: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set with a status and no optional status elements (PS3.7 9.3.1.2,
    9.3.5.2; Implicit VR Little Endian), as pynetdicom encodes it."""
    body = b"".join(
        (
            _ui(0x0002, sop_class_uid) if sop_class_uid else b"",
            _us(0x0100, field),
            _us(0x0120, message_id),
            _us(0x0800, NO_DATA_SET),
            _us(0x0900, status),
            _ui(0x1000, sop_instance_uid) if sop_instance_uid else b"",
        )
    )
    return struct.pack("<HHII", 0, 0x0000, 4, len(body)) + body


def p_data_pdus(context_id: int, command: bytes, max_pdu: int) -> list[bytes]:
    """``command`` as P-DATA-TF PDUs of one PDV each, no longer than the peer's maximum PDU length (0: no limit)."""
    room = len(command) if max_pdu == 0 else max(1, max_pdu - 6)
    pdus = []
    for start in range(0, len(command), room):
        part = command[start : start + room]
        last = start + room >= len(command)
        item = struct.pack(">IBB", len(part) + 2, context_id, 0x03 if last else 0x01) + part
        pdus.append(struct.pack(">BBI", PDU_P_DATA, 0, len(item)) + item)
    return pdus


def abort_pdu(reason: int, source: int = 2) -> bytes:
    return struct.pack(">BBIBBBB", PDU_ABORT, 0, 4, 0, 0, source, reason)


RELEASE_RP = struct.pack(">BBII", PDU_RELEASE_RP, 0, 4, 0)


class StoragePhase:
    """Serves the data-transfer phase of one established association (see the module docstring).

    ``run()`` returns how the association ended: ``"released"``, ``"aborted"`` (by the peer, or by this side after
    a protocol error, a timeout or a kill request) or ``"closed"`` (the connection dropped).
    """

    def __init__(
        self,
        sock: socket.socket,
        contexts: dict[int, Context],
        calling_ae: str,
        peer_max_pdu: int,
        target: Target,
        make_prefix: Callable[[str, str, str], bytes],
        network_timeout: float | None,
        wake_fd: Any = None,
        should_stop: Callable[[], bool] = lambda: False,
    ):
        self.sock = sock
        self.contexts = contexts
        self.calling_ae = calling_ae
        self.peer_max_pdu = peer_max_pdu
        self.target = target
        self._sink: Sink | None = None  # of the C-STORE being received
        # The next C-STORE's sink, opened right after a response while the sender reads its next file: creating a
        # file costs 0.05-0.4 ms of kernel time on the spool's file system, which then leaves the critical path.
        self._spare: Sink | None = None
        self.make_prefix = make_prefix
        self.network_timeout = network_timeout
        self.wake_fd = wake_fd
        self.should_stop = should_stop
        self._hdr = bytearray(6)
        self._hdr_view = memoryview(self._hdr)
        self._buf = bytearray(INITIAL_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self.instances = 0  # C-STOREs answered, for tests and the bench

    # -- socket --------------------------------------------------------------------------------------------------

    def _recv_into(self, view: memoryview) -> None:
        got, need = 0, len(view)
        while got < need:
            n = self.sock.recv_into(view[got:], need - got)
            if not n:
                raise Closed
            got += n

    def _wait_for_pdu(self) -> None:
        """Block until the next PDU starts to arrive; a kill request or the network timeout aborts."""
        deadline = None if self.network_timeout is None else time.monotonic() + self.network_timeout
        while True:
            if self.should_stop():
                raise ProtocolError("the association was stopped by this node", ABORT_NOT_SPECIFIED)
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                return
            wait = MAX_BLOCK_S if deadline is None else min(MAX_BLOCK_S, deadline - time.monotonic())
            if wait <= 0:
                log.warning("network timeout (%s s without data): aborting the association", self.network_timeout)
                raise IdleTimeout("network timeout", ABORT_NOT_SPECIFIED)
            fds = [self.sock] if self.wake_fd is None else [self.sock, self.wake_fd]
            ready, _, _ = select.select(fds, [], [], wait)
            if self.sock in ready:
                return
            if ready and self.wake_fd is not None:
                with contextlib.suppress(BlockingIOError, OSError):
                    self.wake_fd.recv(4096)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _ensure(self, size: int) -> None:
        if size <= len(self._buf):
            return
        grown = bytearray(max(size, 2 * len(self._buf)))
        grown[: len(self._buf)] = self._buf
        self._view.release()
        self._buf, self._view = grown, memoryview(grown)

    def _shrink(self) -> None:
        if len(self._buf) > KEEP_BUFFER_BYTES:
            self._view.release()
            self._buf = bytearray(INITIAL_BUFFER_BYTES)
            self._view = memoryview(self._buf)

    # -- the loop ------------------------------------------------------------------------------------------------

    def run(self) -> str:
        old_timeout = self.sock.gettimeout()
        self.sock.settimeout(self.network_timeout)
        try:
            return self._serve()
        except Closed:
            log.info("association from %s: the connection closed without release", self.calling_ae)
            return "closed"
        except TimeoutError:
            log.warning("network timeout (%s s) inside a PDU: aborting the association", self.network_timeout)
            self._abort(ABORT_NOT_SPECIFIED)
            return "aborted"
        except ProtocolError as exc:
            if not isinstance(exc, IdleTimeout):
                log.warning("association from %s aborted by this node: %s", self.calling_ae, exc)
            self._abort(exc.reason)
            return "aborted"
        except OSError as exc:
            log.info("association from %s: connection error (%s)", self.calling_ae, exc)
            return "closed"
        finally:
            for sink in (self._sink, self._spare):  # the association ended in the middle of a C-STORE, or after
                if sink is not None:
                    sink.discard()
            self._sink = self._spare = None
            with contextlib.suppress(OSError):
                self.sock.settimeout(old_timeout)
            self._view.release()

    def _abort(self, reason: int) -> None:
        with contextlib.suppress(OSError):
            self._send(abort_pdu(reason))

    def _serve(self) -> str:
        hdr = self._hdr_view
        # One DIMSE message at a time: its context, command bytes, and data set bytes received so far.
        cx_id: int | None = None
        command = bytearray()
        cmd: Command | None = None
        prefix_len = 0
        filled = 0  # bytes of self._buf in use (file meta + data set)
        while True:
            self._wait_for_pdu()
            self._recv_into(hdr)
            pdu_type, _, length = struct.unpack(">BBI", hdr)
            if pdu_type == PDU_RELEASE_RQ:
                if cx_id is not None:
                    raise ProtocolError("A-RELEASE-RQ in the middle of a DIMSE message")
                self._skip(length)
                self._send(RELEASE_RP)
                return "released"
            if pdu_type == PDU_ABORT:
                self._skip(length)
                log.info("association from %s aborted by the peer", self.calling_ae)
                return "aborted"
            if pdu_type != PDU_P_DATA:
                raise ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X} during data transfer",
                    ABORT_UNEXPECTED_PDU if pdu_type in (1, 2, 3, 6) else ABORT_UNRECOGNIZED_PDU,
                )
            if length > MAX_PDU_BYTES:
                raise ProtocolError(f"P-DATA-TF of {length} bytes", ABORT_INVALID_PARAMETER)
            remaining = length
            while remaining:
                if remaining < 6:
                    raise ProtocolError("P-DATA-TF with a truncated PDV item", ABORT_INVALID_PARAMETER)
                self._recv_into(hdr)
                item_len, item_cx, control = struct.unpack(">IBB", hdr)
                if item_len < 2 or item_len + 4 > remaining:
                    raise ProtocolError("PDV item length does not fit its PDU", ABORT_INVALID_PARAMETER)
                remaining -= item_len + 4
                size = item_len - 2
                if cx_id is None:
                    if item_cx not in self.contexts:
                        raise ProtocolError(f"PDV on presentation context {item_cx}, which was not accepted")
                    cx_id = item_cx
                elif item_cx != cx_id:
                    raise ProtocolError("PDV of one DIMSE message on two presentation contexts")
                is_command, last = bool(control & 0x01), bool(control & 0x02)
                if is_command:
                    if cmd is not None or len(command) + size > MAX_COMMAND_BYTES:
                        raise ProtocolError("command fragment after a complete command set")
                    start = len(command)
                    command.extend(bytes(size))
                    self._recv_into(memoryview(command)[start:])
                    if not last:
                        continue
                    cmd = parse_command(command)
                    context = self.contexts[cx_id]
                    if cmd.data_set_type == NO_DATA_SET:
                        self._dispatch(cx_id, context, cmd, None, 0)
                        cx_id, cmd, filled = None, None, 0
                        command = bytearray()
                        continue
                    if cmd.field != C_STORE_RQ:
                        raise ProtocolError(f"DIMSE command 0x{cmd.field:04X} is not served on this association")
                    prefix = self.make_prefix(cmd.sop_class_uid, cmd.sop_instance_uid, context.transfer_syntax)
                    prefix_len = filled = len(prefix)
                    self._ensure(filled)
                    self._buf[:filled] = prefix
                    self._sink, self._spare = self._spare or self.target.open_sink(), None
                    self._sink.add(self._view[:filled])
                    continue
                if cmd is None:
                    raise ProtocolError("data set fragment before its command set")
                self._ensure(filled + size)
                fragment = self._view[filled : filled + size]
                self._recv_into(fragment)
                assert self._sink is not None
                self._sink.add(fragment)  # hashed and written while the next fragment arrives
                filled += size
                if last:
                    self._dispatch(cx_id, self.contexts[cx_id], cmd, self._view[:filled], prefix_len)
                    cx_id, cmd, filled = None, None, 0
                    command = bytearray()
                    self._shrink()

    def _skip(self, length: int) -> None:
        """Read and drop the body of an A-RELEASE-RQ or A-ABORT (4 bytes; a larger length is a protocol error)."""
        if length > 64:
            raise ProtocolError(f"a release or abort PDU of {length} bytes", ABORT_INVALID_PARAMETER)
        if length:
            self._recv_into(memoryview(bytearray(length)))

    def _dispatch(self, cx_id: int, context: Context, cmd: Command, data: memoryview | None, prefix_len: int) -> None:
        """Answer one complete request."""
        if cmd.field == C_CANCEL_RQ:
            return  # nothing to cancel: each C-STORE is answered as soon as it is complete
        if cmd.message_id is None:
            raise ProtocolError("request without a Message ID", ABORT_INVALID_PARAMETER)
        if cmd.field == C_ECHO_RQ and data is None:
            if context.storage:
                raise ProtocolError("C-ECHO-RQ on a storage presentation context")
            self._respond(cx_id, encode_response(C_ECHO_RSP, cmd.message_id, 0x0000, cmd.sop_class_uid, ""))
            return
        if cmd.field != C_STORE_RQ or data is None or not context.storage:
            raise ProtocolError(f"DIMSE command 0x{cmd.field:04X} is not served on this presentation context")
        status = self._store(context, cmd, data, prefix_len)
        self._respond(
            cx_id, encode_response(C_STORE_RSP, cmd.message_id, status, cmd.sop_class_uid, cmd.sop_instance_uid)
        )
        self.instances += 1
        if self._spare is None:
            self._spare = self.target.open_sink()

    def _store(self, context: Context, cmd: Command, data: memoryview, prefix_len: int) -> int:
        # A non-conformant UID is not refused here (pynetdicom accepts it too): the data set is checked against the
        # request by the store function, and the spool's file names keep only digits and dots.
        if cmd.sop_class_uid != context.abstract_syntax:
            if self._sink is not None:
                self._sink.discard()
                self._sink = None
            log.warning(
                "C-STORE from %s refused with 0xA900: SOP class %s on a context for %s",
                self.calling_ae,
                cmd.sop_class_uid,
                context.abstract_syntax,
            )
            return 0xA900
        sink, self._sink = self._sink, None
        return self.target.store(
            self.calling_ae,
            cmd.sop_class_uid,
            cmd.sop_instance_uid,
            context.abstract_syntax,
            context.transfer_syntax,
            data,
            prefix_len,
            sink,
        )

    def _respond(self, cx_id: int, command: bytes) -> None:
        for pdu in p_data_pdus(cx_id, command, self.peer_max_pdu):
            self._send(pdu)
