"""kvcd_client - Python client for the kvcd KV-cache daemon (protocol version 1).

Pure Python on ``zmq`` (pyzmq) and ``msgpack``; implements docs/PROTOCOL.md.
One ``Client`` owns one ZeroMQ DEALER socket; requests can be pipelined and the
replies are matched by request id, so they may arrive in any order. Bulk bytes
are sent and received without copying them.

Usage::

    from kvcd_client import Client, KvcdError

    with Client("ipc:///run/kvcd/kvcd.sock", timeout_ms=5000) as c:
        print(c.ping()["server"])
        hashes = [b"chunk-000", b"chunk-001"]
        c.store("meta/llama", hashes, [kv0, kv1], world_size=2, worker_id=1)
        prefix, present = c.lookup("meta/llama", hashes, world_size=2, worker_id=1)
        got = c.load("meta/llama", hashes[:prefix], world_size=2, worker_id=1)
        rids = [c.submit_lookup("meta/llama", [h]) for h in hashes]  # pipelined
        answers = [c.wait(r) for r in rids]

Hashes: any bytes-like object of 1..64 bytes is sent as is. An ``int`` is sent as
8 bytes big-endian two's complement, so LMCache-style signed or unsigned 64-bit
hashes both work (range -2**63 .. 2**64-1); ``5`` and ``b"\\0\\0\\0\\0\\0\\0\\0\\5"``
therefore name the same key.

Data: ``bytes``, ``bytearray``, ``memoryview`` or any C-contiguous object with the
buffer protocol (a numpy array, ``array.array``...). Large buffers are handed to
ZeroMQ without a copy, so do not modify them until the request's reply has
arrived (``store()`` returning, or ``wait()`` for a submitted store) or, after
a timeout, until the Client is closed.

Errors: a request that fails as a whole raises ``KvcdError`` (``.code``, ``.name``,
``.message``); no reply within the timeout raises ``KvcdTimeout``, a subclass.
Per-key outcomes (a miss, no space) are result codes, not exceptions.

A Client is not thread-safe (neither is a ZeroMQ socket): use one per thread.
"""

import errno
import itertools
import time

import msgpack
import zmq

__all__ = [
    "Client", "KvcdError", "KvcdTimeout", "LoadResult", "kv_rank", "hash_bytes",
    "error_name", "PROTO_VERSION", "OK", "ENOTFOUND", "ENOSPACE",
]

PROTO_VERSION = 1

# Operation numbers (PROTOCOL.md section 4); never reused or renumbered.
OP_PING, OP_STORE, OP_LOOKUP, OP_LOAD, OP_REMOVE, OP_CLEAR, OP_STATUS = range(1, 8)

# Error codes (PROTOCOL.md section 5, protocol/kvcd_err.h). 1..999 are errno values.
_ERRORS = {
    1001: "EMALFORMED", 1002: "EVERSION", 1003: "EUNKNOWNOP", 1004: "EMISSING",
    1005: "EBADFIELD", 1006: "ETOOLARGE", 1007: "ETOOMANYKEYS", 1008: "EFRAMES",
    1009: "ENOSPACE", 1010: "ENOTFOUND", 1011: "ESHUTDOWN", 1012: "EBUSY",
    1013: "ETIMEDOUT", 1014: "EINTERNAL", 1015: "ECHECKSUM", 1016: "ECONFIG",
    1017: "EUNAVAIL", 1018: "ESEGMENT", 1019: "ECANCELED", 1020: "ECONNECT",
}
OK = 0
ENOSPACE = 1009
ENOTFOUND = 1010

_MASK64 = (1 << 64) - 1


def error_name(code):
    """Stable name of a wire error code: "OK", "EIO", "ENOTFOUND", ... """
    if code == 0:
        return "OK"
    if code in _ERRORS:
        return _ERRORS[code]
    return errno.errorcode.get(code, "E%d" % code)


class KvcdError(Exception):
    """A request failed as a whole. ``code`` is the wire code (e.g. 1002),
    ``name`` its stable name ("EVERSION"), ``message`` the server's text."""

    def __init__(self, code, name=None, message=None):
        self.code = int(code)
        self.name = name or error_name(self.code)
        self.message = message or ""
        super().__init__("%s (%d): %s" % (self.name, self.code, self.message))


class KvcdTimeout(KvcdError):
    """No reply within the timeout (code 1020 ECONNECT: the server did not answer)."""

    def __init__(self, message="no reply from server"):
        super().__init__(1020, "ECONNECT", message)


class LoadResult(list):
    """What LOAD returns: a list with one entry per key, a ``memoryview``
    over the received frame for a hit (zero-copy; ``bytes(x)`` copies) or ``None``
    for a miss. ``codes`` holds the per-key result codes (0 hit, 1010 miss)."""

    def __init__(self, datas, codes):
        super().__init__(datas)
        self.codes = codes


def kv_rank(world_size=1, worker_id=0):
    """LMCache's packed rank: world_size<<24 | worker_id<<16 | world_size<<8 | worker_id."""
    w, i = world_size & 0xFF, worker_id & 0xFF
    return w << 24 | i << 16 | w << 8 | i


def hash_bytes(h):
    """The wire form of a chunk hash: bytes-like as is, int as 8 bytes big-endian."""
    if isinstance(h, bool):
        raise TypeError("a chunk hash must be bytes-like or int, not bool")
    if isinstance(h, int):
        if not -(1 << 63) <= h <= _MASK64:
            raise ValueError("int chunk hash %d does not fit in 64 bits" % h)
        return (h & _MASK64).to_bytes(8, "big")
    if isinstance(h, bytes):
        return h
    if isinstance(h, str):
        raise TypeError("a chunk hash must be bytes-like or int, not str")
    return memoryview(h).tobytes()


def _as_frame(data):
    """A flat byte view of a buffer, without copying it."""
    mv = memoryview(data)
    if not mv.c_contiguous:
        raise ValueError("store data must be C-contiguous")
    if mv.ndim != 1 or mv.format != "B":
        mv = mv.cast("B")
    return mv


class Client:
    """A connection to one kvcd server.

    ``endpoint`` is any ZeroMQ endpoint ("tcp://127.0.0.1:5555", "ipc:///path").
    ``timeout_ms`` bounds every blocking call (sending and waiting for a reply);
    it must be positive. ``context`` defaults to the process-wide zmq Context.

    Key-set arguments, shared by store/lookup/load/remove and their submit_ forms:
    ``model`` (str), ``hashes`` (list of bytes-like or int, see the module
    docstring), ``world_size``/``worker_id`` (sent for the server to pack into a
    kv_rank) or ``kv_rank`` (used as is when given), ``group`` (int) and
    ``salt`` (str).
    """

    def __init__(self, endpoint="tcp://127.0.0.1:5555", timeout_ms=5000, context=None):
        if not timeout_ms or timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.endpoint = endpoint
        self.timeout_ms = timeout_ms
        self._sock = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDTIMEO, int(timeout_ms))
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._pending = {}   # request id -> (op, number of keys)
        self._replies = {}   # request id -> (header, bulk frames), arrived early

    # -- lifecycle ---------------------------------------------------------

    def close(self):
        """Close the socket; requests still in flight are abandoned."""
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._pending.clear()
        self._replies.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- blocking calls ----------------------------------------------------

    def ping(self):
        """Liveness and limits: dict with server, proto, chunk_size, max_frame,
        max_keys, max_request, l1_capacity (and any newer fields)."""
        return self._call(self.submit_ping())

    def store(self, model, hashes, datas, world_size=1, worker_id=0, kv_rank=None,
              group=0, salt=""):
        """Store datas[i] under key i. Returns per-key codes: 0 stored (or
        already present), 1009 ENOSPACE, ..."""
        return self._call(self.submit_store(model, hashes, datas, world_size,
                                            worker_id, kv_rank, group, salt))

    def lookup(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
               group=0, salt=""):
        """Returns (prefix, present): how many leading keys are available, and a
        list of bools, one per key."""
        return self._call(self.submit_lookup(model, hashes, world_size, worker_id,
                                             kv_rank, group, salt))

    def load(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
             group=0, salt=""):
        """Returns a LoadResult: per key a memoryview of the bytes, or None on a
        miss; ``.codes`` has the per-key codes (0, 1010 ENOTFOUND)."""
        return self._call(self.submit_load(model, hashes, world_size, worker_id,
                                           kv_rank, group, salt))

    def remove(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
               group=0, salt=""):
        """Returns per-key codes: 0 removed, 1010 not present."""
        return self._call(self.submit_remove(model, hashes, world_size, worker_id,
                                             kv_rank, group, salt))

    def clear(self):
        """Remove every object from L1; returns how many were removed."""
        return self._call(self.submit_clear())

    def status(self):
        """The server's status map (server, uptime_s, inflight, l1, counters)."""
        return self._call(self.submit_status())

    # -- pipelined calls: submit_* returns a request id for wait() -----------

    def submit_ping(self):
        """Send a PING; returns the request id for wait()."""
        return self._submit(OP_PING, {}, ())

    def submit_store(self, model, hashes, datas, world_size=1, worker_id=0,
                     kv_rank=None, group=0, salt=""):
        """Send a STORE; returns the request id for wait(). Keep the data
        buffers unchanged until then."""
        frames = [_as_frame(d) for d in datas]
        if len(frames) != len(hashes):
            raise ValueError("store needs one data buffer per hash (%d hashes, %d "
                             "buffers)" % (len(hashes), len(frames)))
        return self._submit(OP_STORE, self._keyset(model, hashes, world_size,
                                                   worker_id, kv_rank, group, salt),
                            frames)

    def submit_lookup(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
                      group=0, salt=""):
        """Send a LOOKUP; returns the request id for wait()."""
        return self._submit(OP_LOOKUP, self._keyset(model, hashes, world_size,
                                                    worker_id, kv_rank, group, salt),
                            ())

    def submit_load(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
                    group=0, salt=""):
        """Send a LOAD; returns the request id for wait()."""
        return self._submit(OP_LOAD, self._keyset(model, hashes, world_size,
                                                  worker_id, kv_rank, group, salt),
                            ())

    def submit_remove(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
                      group=0, salt=""):
        """Send a REMOVE; returns the request id for wait()."""
        return self._submit(OP_REMOVE, self._keyset(model, hashes, world_size,
                                                    worker_id, kv_rank, group, salt),
                            ())

    def submit_clear(self):
        """Send a CLEAR; returns the request id for wait()."""
        return self._submit(OP_CLEAR, {}, ())

    def submit_status(self):
        """Send a STATUS; returns the request id for wait()."""
        return self._submit(OP_STATUS, {}, ())

    def wait(self, req_id, timeout_ms=None):
        """Wait for the reply to a submitted request and return it decoded exactly
        as the matching blocking call would. Replies to other requests that
        arrive meanwhile are kept for their own wait(). Raises KvcdError if the
        request failed, KvcdTimeout after timeout_ms (default: the client's);
        after a timeout the request stays pending and can be waited for again,
        or forgotten with discard(). A reply with id 0 (the server could not
        decode some request of ours) raises KvcdError here."""
        if req_id in self._replies:
            return self._decode(req_id, *self._replies.pop(req_id))
        if req_id not in self._pending:
            raise KeyError("request %r is not pending" % (req_id,))
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._sock.poll(left_ms, zmq.POLLIN):
                raise KvcdTimeout("no reply to request %d within %d ms"
                                  % (req_id, timeout_ms))
            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            header = self._header(frames[0])
            rid = header.get("id")
            if rid == req_id:
                return self._decode(req_id, header, frames[1:])
            if rid in self._pending:
                self._replies[rid] = (header, frames[1:])
            elif rid == 0:
                raise _reply_error(header)
            # else: a late reply to a discarded request; drop it.

    def discard(self, req_id):
        """Forget a submitted request: its reply, now or later, is dropped."""
        self._pending.pop(req_id, None)
        self._replies.pop(req_id, None)

    @property
    def pending(self):
        """Number of submitted requests whose replies were not yet returned."""
        return len(self._pending)

    # -- internals ---------------------------------------------------------

    def _call(self, req_id):
        try:
            return self.wait(req_id)
        except KvcdTimeout:
            self.discard(req_id)
            raise

    @staticmethod
    def _keyset(model, hashes, world_size, worker_id, kv_rank, group, salt):
        fields = {"model": model, "hashes": [hash_bytes(h) for h in hashes],
                  "group": group, "salt": salt}
        if kv_rank is None:
            fields["world_size"] = world_size
            fields["worker_id"] = worker_id
        else:
            fields["kv_rank"] = kv_rank
        return fields

    def _submit(self, op, fields, frames):
        req_id = next(self._ids)
        header = {"v": PROTO_VERSION, "id": req_id, "op": op}
        header.update(fields)
        parts = [msgpack.packb(header, use_bin_type=True)]
        parts.extend(frames)
        try:
            # copy=False: pyzmq still copies frames under its copy_threshold
            # (64 KiB), where tracking the buffer would cost more than copying.
            self._sock.send_multipart(parts, copy=False)
        except zmq.Again:
            raise KvcdTimeout("could not send to %s within %d ms"
                              % (self.endpoint, self.timeout_ms)) from None
        self._pending[req_id] = (op, len(fields.get("hashes", ())))
        return req_id

    @staticmethod
    def _header(frame):
        try:
            header = msgpack.unpackb(frame.bytes, raw=False, strict_map_key=False)
        except Exception as e:
            raise KvcdError(1001, "EMALFORMED", "bad reply header: %s" % e) from None
        if not isinstance(header, dict):
            raise KvcdError(1001, "EMALFORMED", "reply header is not a map")
        return header

    def _decode(self, req_id, header, bulk):
        op, nkeys = self._pending.pop(req_id)
        if header.get("err", 0) != 0:
            raise _reply_error(header)
        try:
            if op == OP_PING:
                return {k: v for k, v in header.items()
                        if k not in ("v", "id", "op", "err")}
            if op in (OP_STORE, OP_REMOVE):
                return _per_key(header["results"], nkeys)
            if op == OP_LOOKUP:
                present = [bool(p) for p in _per_key(header["present"], nkeys)]
                return int(header["prefix"]), present
            if op == OP_LOAD:
                codes = _per_key(header["results"], nkeys)
                if len(bulk) != nkeys:
                    raise ValueError("%d bulk frames for %d keys" % (len(bulk), nkeys))
                return LoadResult([f.buffer if c == 0 else None
                                   for c, f in zip(codes, bulk)], codes)
            if op == OP_CLEAR:
                return int(header["removed"])
            if op == OP_STATUS:
                return header["status"]
        except (KeyError, TypeError, ValueError) as e:
            raise KvcdError(1001, "EMALFORMED", "bad reply to op %d: %r" % (op, e)) \
                from None
        raise AssertionError("unreachable: op %d" % op)


def _per_key(values, nkeys):
    if not isinstance(values, list) or len(values) != nkeys:
        raise ValueError("expected %d per-key values, got %r" % (nkeys, values))
    return values


def _reply_error(header):
    code = header.get("err", 1014)
    return KvcdError(code, header.get("ename"), header.get("msg"))
