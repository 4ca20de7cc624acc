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

Shared memory (client and server on the same host): ``create_segment(size)``
makes a sealed memfd, maps it and registers it; ``seg.buf`` is a writable
memoryview over it (``numpy.frombuffer(seg.buf, dtype)`` or
``torch.frombuffer(seg.buf, dtype=...)`` give arrays without a copy).
``store_shm``/``load_shm`` then name (offset, length) ranges of it per key and
the server copies between the segment and its memory: no bytes cross the
socket. The segment belongs to this Client's connection; the server drops it
after ``--segment-lease-ms`` without any request from it (call ``ping()`` while
idle)::

    with c.create_segment(64 << 20) as seg:
        seg.buf[0:4 << 20] = kv0
        c.store_shm("meta/llama", [h0], seg, [0], [4 << 20])
        got = c.load_shm("meta/llama", [h0], seg, [8 << 20], [4 << 20])
        # got[0] is a memoryview of seg.buf, got.lengths[0] == 4 << 20

Zero-copy (same host and user as kvcd, ipc:// endpoint): kvcd's L1 is one
shared-memory object. ``map_l1()`` maps it once; ``reserve`` then returns per
key a writable memoryview into L1 to fill in place, ``commit`` makes the
objects visible (``abort`` gives them back); ``map`` returns read-only
memoryviews of stored objects, each held under a lease until ``release``. No
payload byte crosses the socket or is copied by the daemon; numpy/torch can
wrap the views without a copy. The server releases what a client holds when
its connection closes and after ``--segment-lease-ms`` without a request::

    l1 = c.map_l1()
    got = c.reserve("meta/llama", [h0], [len(kv0)])
    if got.codes[0] == OK:
        got[0][:] = kv0                       # written straight into L1
        c.commit("meta/llama", [h0])
    views = c.map("meta/llama", [h0])         # views[0]: the object, in place
    arr = numpy.frombuffer(views[0], dtype=numpy.uint8)
    del arr, views
    c.release("meta/llama", [h0])

A Client is not thread-safe (neither is a ZeroMQ socket): use one per thread.
"""

import errno
import fcntl
import itertools
import mmap
import os
import struct
import time

import msgpack
import zmq

__all__ = [
    "Client", "KvcdError", "KvcdTimeout", "LoadResult", "Segment", "kv_rank",
    "hash_bytes", "error_name", "PROTO_VERSION", "OK", "ENOTFOUND", "ENOSPACE",
    "ESEGMENT", "EPEERUNVERIFIED", "EMSGSIZE", "EBUSY", "EDUPLICATE", "SharedL1",
]

PROTO_VERSION = 1

# Operation numbers (PROTOCOL.md section 4); never reused or renumbered.
OP_PING, OP_STORE, OP_LOOKUP, OP_LOAD, OP_REMOVE, OP_CLEAR, OP_STATUS = range(1, 8)
OP_REGISTER_SEGMENT, OP_UNREGISTER_SEGMENT, OP_STORE_SHM, OP_LOAD_SHM = range(8, 12)
OP_RESERVE, OP_COMMIT, OP_ABORT, OP_MAP, OP_RELEASE, OP_LOOKUP_MAP = range(12, 18)

# Error codes (PROTOCOL.md section 5, protocol/kvcd_err.h). 1..999 are errno values.
_ERRORS = {
    1001: "EMALFORMED", 1002: "EVERSION", 1003: "EUNKNOWNOP", 1004: "EMISSING",
    1005: "EBADFIELD", 1006: "ETOOLARGE", 1007: "ETOOMANYKEYS", 1008: "EFRAMES",
    1009: "ENOSPACE", 1010: "ENOTFOUND", 1011: "ESHUTDOWN", 1012: "EBUSY",
    1013: "ETIMEDOUT", 1014: "EINTERNAL", 1015: "ECHECKSUM", 1016: "ECONFIG",
    1017: "EUNAVAIL", 1018: "ESEGMENT", 1019: "ECANCELED", 1020: "ECONNECT",
    1021: "EPEERUNVERIFIED", 1022: "EQUEUEFULL", 1023: "EDUPLICATE",
}
OK = 0
ENOSPACE = 1009
ENOTFOUND = 1010
ESEGMENT = 1018
EBUSY = 1012        # reserve: another client holds a reservation of the key
EDUPLICATE = 1023   # reserve/commit: the key is already stored
EPEERUNVERIFIED = 1021  # shared memory refused: connect over ipc:// as kvcd's user
EMSGSIZE = errno.EMSGSIZE   # per key in load_shm: the capacity was too small

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


class Segment:
    """A shared-memory segment registered with a kvcd server; made by
    ``Client.create_segment(size)``.

    ``buf`` is a writable memoryview of ``size`` bytes over this process's
    mapping, ``id`` the server's segment id. Bytes a ``store_shm`` reads must not
    change until it returns; bytes a ``load_shm`` writes are there when it
    returns. ``close()`` (or leaving a ``with`` block) unregisters and unmaps
    it; release views taken from ``buf`` (numpy arrays included) first, or the
    mapping stays until they are garbage.
    """

    _SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

    def __init__(self, client, size):
        size = int(size)
        if size <= 0:
            raise ValueError("segment size must be positive")
        self.size = size
        self.id = None
        self.buf = None
        self._client = client
        self._mmap = None
        # The "kvcd-" name prefix is what the server accepts; the seals make
        # sure its mapping can never lose pages (no SIGBUS) whatever we do.
        self.fd = os.memfd_create("kvcd-py", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, size)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, self._SEALS)
            self._mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
            self.buf = memoryview(self._mmap)
            self.id = client._call(client._submit(
                OP_REGISTER_SEGMENT, {"pid": os.getpid(), "fd": self.fd, "size": size}, ()))
        except BaseException:
            self._release()
            raise

    @property
    def closed(self):
        return self.fd < 0

    def close(self):
        """Unregister (when still registered and the client is open), unmap
        and close. Raises the server's error, if any, after releasing
        everything locally."""
        if self.closed:
            return
        err = None
        if self.id is not None and not self._client._sock.closed:
            try:
                self._client._call(self._client._submit(
                    OP_UNREGISTER_SEGMENT, {"segment": self.id}, ()))
            except KvcdError as e:
                err = e
        self._release()
        if err is not None:
            raise err

    def _release(self):
        if self.buf is not None:
            try:
                self.buf.release()
            except BufferError:
                pass   # exported (numpy...); released with its last view
            self.buf = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass   # views are still exported; unmapped when they are gone
            self._mmap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<kvcd Segment id=%s size=%d%s>" % (self.id, self.size,
                                                    " closed" if self.closed else "")


def keep_receive_memory():
    """Opt-in, process-wide (the C client's ``kvcd_client_keep_memory``): make
    the buffers libzmq allocates for every received frame reuse memory instead
    of faulting in fresh pages each time. glibc maps every block above its mmap
    threshold (at most 32 MiB) anew and unmaps it on free, so without this every
    page of a large LOAD frame is a page fault. Sets glibc's malloc to one
    arena, no mmap'd blocks, no trimming: freed memory stays with the process.
    Call it once, before the first ``Client`` (and before ZeroMQ or other
    threads start). Returns True, or False where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    return (mallopt(M_ARENA_MAX, 1) == 1 and mallopt(M_MMAP_MAX, 0) == 1
            and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1)


class SharedL1:
    """kvcd's L1, mapped read-write from the shared-memory object the server
    named in PING. ``buf`` is a memoryview over all of it. Close it (or leave
    the ``with`` block) only once no view of it is alive."""

    def __init__(self, name, size):
        self.name = name
        self.size = size
        fd = os.open("/dev/shm/" + name.lstrip("/"), os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < size:
                raise KvcdError(1005, "EBADFIELD", "%s is smaller than the server says"
                                % name)
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.buf = memoryview(self._mm)

    @property
    def closed(self):
        return self.buf is None

    def close(self):
        if self.buf is None:
            return
        self.buf.release()
        self.buf = None
        self._mm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
        self._l1 = None      # SharedL1 once map_l1() was called

    # -- lifecycle ---------------------------------------------------------

    def close(self):
        """Close the socket; requests still in flight are abandoned."""
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._pending.clear()
        self._replies.clear()
        if self._l1 is not None:
            try:
                self._l1.close()
            except BufferError:
                pass  # views of it are still alive: the mapping goes with them

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

    def create_segment(self, size):
        """Create, map and register a shared-memory segment of size bytes;
        returns a Segment (use it in a ``with`` block or ``close()`` it)."""
        return Segment(self, size)

    def store_shm(self, model, hashes, segment, offsets, lengths, world_size=1,
                  worker_id=0, kv_rank=None, group=0, salt=""):
        """Store segment.buf[offsets[i]:offsets[i] + lengths[i]] under key i.
        Returns per-key codes like store()."""
        return self._call(self.submit_store_shm(model, hashes, segment, offsets, lengths,
                                                world_size, worker_id, kv_rank, group,
                                                salt))

    def load_shm(self, model, hashes, segment, offsets, capacities, world_size=1,
                 worker_id=0, kv_rank=None, group=0, salt=""):
        """Copy each hit into segment.buf at offsets[i] (at most capacities[i]
        bytes). Returns a LoadResult: per key a memoryview of the segment
        holding the object, or None; ``.codes`` (0, 1010 ENOTFOUND, EMSGSIZE
        when the capacity was too small) and ``.lengths`` (object sizes, 0 on a
        miss)."""
        return self._call(self.submit_load_shm(model, hashes, segment, offsets, capacities,
                                               world_size, worker_id, kv_rank, group, salt))

    def map_l1(self):
        """Map the server's shared L1 (once per Client; later calls return the
        same SharedL1). reserve() and map() then return views into it."""
        if self._l1 is None or self._l1.closed:
            info = self.ping()
            if not info.get("l1_shm") or not info.get("l1_size"):
                raise KvcdError(1003, "EUNKNOWNOP", "the server reports no shared L1")
            self._l1 = SharedL1(info["l1_shm"], int(info["l1_size"]))
        return self._l1

    def reserve(self, model, hashes, lengths, world_size=1, worker_id=0, kv_rank=None,
                group=0, salt=""):
        """Reserve lengths[i] bytes in L1 per key. Returns a LoadResult: per key
        a writable memoryview into the mapped L1 (None unless ``.codes[i]`` is 0:
        EDUPLICATE already stored, EBUSY reserved by another client, ENOSPACE),
        with ``.offsets``. Write the bytes, then commit() or abort()."""
        return self._call(self.submit_reserve(model, hashes, lengths, world_size, worker_id,
                                              kv_rank, group, salt))

    def commit(self, model, hashes, world_size=1, worker_id=0, kv_rank=None, group=0,
               salt=""):
        """Make this client's reservations visible. Per-key codes: 0,
        ENOTFOUND (no reservation: expired or aborted), EDUPLICATE (stored
        meanwhile by someone else; the reservation is gone)."""
        return self._call(self._submit(OP_COMMIT, self._keyset(
            model, hashes, world_size, worker_id, kv_rank, group, salt), ()))

    def abort(self, model, hashes, world_size=1, worker_id=0, kv_rank=None, group=0,
              salt=""):
        """Give reservations back. Per-key codes: 0 or ENOTFOUND."""
        return self._call(self._submit(OP_ABORT, self._keyset(
            model, hashes, world_size, worker_id, kv_rank, group, salt), ()))

    def map(self, model, hashes, world_size=1, worker_id=0, kv_rank=None, group=0,
            salt=""):
        """Lease stored objects to read in place. Returns a LoadResult: per key
        a read-only memoryview into L1 or None (``.codes``: 0, ENOTFOUND),
        with ``.offsets`` and ``.lengths``. Call release() when done."""
        return self._call(self.submit_map(model, hashes, world_size, worker_id, kv_rank,
                                          group, salt))

    def release(self, model, hashes, world_size=1, worker_id=0, kv_rank=None, group=0,
                salt=""):
        """Drop one lease per key. Per-key codes: 0 or ENOTFOUND."""
        return self._call(self._submit(OP_RELEASE, self._keyset(
            model, hashes, world_size, worker_id, kv_rank, group, salt), ()))

    def lookup_map(self, model, hashes, world_size=1, worker_id=0, kv_rank=None, group=0,
                   salt=""):
        """LOOKUP the keys (L2 tiers included) and lease the prefix in one
        request. Returns a LoadResult with one read-only memoryview into L1
        per key of the prefix (``len(result) == result.prefix``), with
        ``.prefix``, ``.offsets`` and ``.lengths``. release() the first
        ``prefix`` hashes when done."""
        return self._call(self.submit_lookup_map(model, hashes, world_size, worker_id,
                                                 kv_rank, group, salt))

    def submit_lookup_map(self, model, hashes, world_size=1, worker_id=0, kv_rank=None,
                          group=0, salt=""):
        return self._submit(OP_LOOKUP_MAP, self._keyset(model, hashes, world_size, worker_id,
                                                        kv_rank, group, salt), ())

    def submit_reserve(self, model, hashes, lengths, world_size=1, worker_id=0,
                       kv_rank=None, group=0, salt=""):
        lengths = [int(n) for n in lengths]
        if len(lengths) != len(hashes):
            raise ValueError("need one length per hash")
        fields = self._keyset(model, hashes, world_size, worker_id, kv_rank, group, salt)
        fields["lengths"] = lengths
        return self._submit(OP_RESERVE, fields, ())

    def submit_map(self, model, hashes, world_size=1, worker_id=0, kv_rank=None, group=0,
                   salt=""):
        return self._submit(OP_MAP, self._keyset(model, hashes, world_size, worker_id,
                                                 kv_rank, group, salt), ())

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

    def submit_store_shm(self, model, hashes, segment, offsets, lengths, world_size=1,
                         worker_id=0, kv_rank=None, group=0, salt=""):
        """Send a STORE_SHM; returns the request id for wait(). Keep the bytes
        unchanged until then."""
        fields = self._shm_fields(model, hashes, segment, offsets, lengths, "lengths",
                                  world_size, worker_id, kv_rank, group, salt)
        return self._submit(OP_STORE_SHM, fields, ())

    def submit_load_shm(self, model, hashes, segment, offsets, capacities, world_size=1,
                        worker_id=0, kv_rank=None, group=0, salt=""):
        """Send a LOAD_SHM; returns the request id for wait()."""
        fields = self._shm_fields(model, hashes, segment, offsets, capacities, "capacities",
                                  world_size, worker_id, kv_rank, group, salt)
        return self._submit(OP_LOAD_SHM, fields, (), ctx=(segment, fields["offsets"]))

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

    def _shm_fields(self, model, hashes, segment, offsets, sizes, sizes_name, world_size,
                    worker_id, kv_rank, group, salt):
        if not isinstance(segment, Segment) or segment.closed:
            raise ValueError("segment must be an open Segment from create_segment()")
        offsets = [int(o) for o in offsets]
        sizes = [int(n) for n in sizes]
        if len(offsets) != len(hashes) or len(sizes) != len(hashes):
            raise ValueError("need one offset and one %s entry per hash" % sizes_name)
        fields = self._keyset(model, hashes, world_size, worker_id, kv_rank, group, salt)
        fields.update({"segment": segment.id, "offsets": offsets, sizes_name: sizes})
        return fields

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

    def _submit(self, op, fields, frames, ctx=None):
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
        self._pending[req_id] = (op, len(fields.get("hashes", ())), ctx)
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
        op, nkeys, ctx = self._pending.pop(req_id)
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
            if op == OP_REGISTER_SEGMENT:
                return int(header["segment"])
            if op == OP_UNREGISTER_SEGMENT:
                return None
            if op in (OP_STORE_SHM, OP_COMMIT, OP_ABORT, OP_RELEASE):
                return _per_key(header["results"], nkeys)
            if op in (OP_RESERVE, OP_MAP):
                codes = _per_key(header["results"], nkeys)
                offsets = [int(o) for o in _per_key(header["offsets"], nkeys)]
                lengths = [int(n) for n in _per_key(header["lengths"], nkeys)]
                l1 = self._l1
                if l1 is None or l1.closed:
                    views = [None] * nkeys
                else:
                    views = [(l1.buf[o:o + n] if op == OP_RESERVE
                              else l1.buf[o:o + n].toreadonly()) if c == 0 else None
                             for c, o, n in zip(codes, offsets, lengths)]
                result = LoadResult(views, codes)
                result.offsets = offsets
                result.lengths = lengths
                return result
            if op == OP_LOOKUP_MAP:
                prefix = int(header["prefix"])
                ext = header["extents"]
                if not isinstance(ext, bytes) or len(ext) != 16 * prefix or prefix > nkeys:
                    raise ValueError("extents do not match prefix %d" % prefix)
                pairs = struct.unpack("<%dQ" % (2 * prefix), ext)
                offsets, lengths = list(pairs[0::2]), list(pairs[1::2])
                l1 = self._l1
                if l1 is None or l1.closed:
                    views = [None] * prefix
                else:
                    views = [l1.buf[o:o + n].toreadonly() for o, n in zip(offsets, lengths)]
                result = LoadResult(views, [0] * prefix)
                result.prefix = prefix
                result.offsets = offsets
                result.lengths = lengths
                return result
            if op == OP_LOAD_SHM:
                codes = _per_key(header["results"], nkeys)
                lengths = [int(n) for n in _per_key(header["lengths"], nkeys)]
                segment, offsets = ctx
                buf = segment.buf
                if buf is None:
                    views = [None] * nkeys
                else:
                    views = [buf[o:o + n] if c == 0 else None
                             for c, o, n in zip(codes, offsets, lengths)]
                result = LoadResult(views, codes)
                result.lengths = lengths
                return result
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
