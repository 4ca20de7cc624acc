"""kvcd_zc - page copies between engine host memory and kvcd's shared L1.

The common part of the engine modules (kvcd_sglang, kvcd_vllm): an engine
hands over pages of its CPU KV memory as (address, size) fragments; a page is
one kvcd object, its fragments concatenated in order. A put RESERVEs the
objects, copies the fragments into L1 (ctypes.memmove: one copy, done by this
process, with the GIL released) and COMMITs; a get MAPs them, copies out and
RELEASEs. No payload byte crosses the socket (docs/PROTOCOL.md section 11), so
the endpoint must be ipc:// and this process must run as kvcd's user.

Invariants:
- Never raises on kvcd trouble: a kvcd that is down, slow, restarted or
  refuses gives misses (get/lookup) and failures (put), within about one
  ``timeout_ms``; after a failure the connection is dropped and, for
  ``retry_ms``, every call fails at once instead of waiting again.
- Never writes into or reads from an L1 mapping that is not the answering
  kvcd's: a socket monitor watches for disconnects, and any reply that may
  come from another kvcd than the one whose L1 is mapped (a restart) is
  treated as a failure; the mapping is renewed by the next call. A put that
  saw a restart removes the keys it committed (their bytes may have gone to
  the old L1).
- One connection per thread (a kvcd Client is not thread-safe); leases and
  reservations taken by a call are released by that call, in every path.
"""

import ctypes
import threading
import time

import zmq

from kvcd_client import (Client, KvcdError, OK, EDUPLICATE, ENOTFOUND)

__all__ = ["PageStore", "key_bytes"]

_MAX_HASH = 64


def key_bytes(key):
    """An engine's page key as a kvcd chunk hash (1..64 bytes): bytes as is;
    a hex string (SGLang's SHA-256 page hashes) as its bytes; any other str
    as UTF-8. Longer keys are refused with ValueError."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
    elif isinstance(key, str):
        try:
            b = bytes.fromhex(key) if len(key) % 2 == 0 and key else key.encode()
        except ValueError:
            b = key.encode()
    else:
        raise TypeError("a page key must be bytes or str, not %s" % type(key).__name__)
    if not 1 <= len(b) <= _MAX_HASH:
        raise ValueError("a page key must be 1..64 bytes, got %d" % len(b))
    return b


class _Restarted(KvcdError):
    """The socket lost its peer during a call: kvcd restarted (new L1)."""

    def __init__(self):
        super().__init__(1017, "EUNAVAIL", "kvcd restarted during the call")


class _Conn:
    """One thread's connection: Client, mapped L1 and its base address."""

    def __init__(self, endpoint, timeout_ms):
        self.client = Client(endpoint, timeout_ms=timeout_ms)
        self.monitor = self.l1 = None
        try:
            sock = self.client._sock
            self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
            info = self.client.ping()
            self.max_keys = int(info.get("max_keys", 1024))
            self.l1 = self.client.map_l1()
            c = ctypes.c_char.from_buffer(self.l1._mm)
            self.base = ctypes.addressof(c)
            del c
        except BaseException:
            self.close()
            raise
        self.restarted()   # events before the first reply are not a restart

    def restarted(self):
        """True if the socket lost its peer since the last call."""
        seen = False
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
            seen = True
        return seen

    def close(self):
        if self.monitor is not None:
            try:
                self.client._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(0)
        self.client.close()
        if self.l1 is not None:
            try:
                self.l1.close()
            except BufferError:
                pass


class PageStore:
    """Pages of engine memory in kvcd, under one key namespace.

    ``namespace`` is a dict of key-set fields for every request: ``model``,
    ``world_size``/``worker_id`` (or ``kv_rank``), ``group``, ``salt``.
    Fragments are (address, size) pairs; addresses must stay valid and
    unchanged for the duration of the call.
    """

    def __init__(self, endpoint, namespace, timeout_ms=2000, retry_ms=1000):
        if not endpoint.startswith("ipc://"):
            raise ValueError("kvcd endpoint %r: zero-copy needs an ipc:// endpoint"
                             % endpoint)
        self.endpoint = endpoint
        self.ns = dict(namespace)
        self.timeout_ms = int(timeout_ms)
        self.retry_ms = int(retry_ms)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns = []
        self._down_until = 0.0
        self.failures = 0

    # -- connection ----------------------------------------------------------

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is not None:
            return c
        if time.monotonic() < self._down_until:
            return None
        try:
            c = _Conn(self.endpoint, self.timeout_ms)
        except (KvcdError, OSError, zmq.ZMQError):
            self._fail(None)
            return None
        self._local.conn = c
        with self._lock:
            self._conns.append(c)
        return c

    def _fail(self, conn, restarted=False):
        self.failures += 1
        if not restarted:      # a restarted kvcd is up: reconnect at once
            self._down_until = time.monotonic() + self.retry_ms / 1000.0
        if conn is not None:
            self._local.conn = None
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            conn.close()

    def close(self):
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
        self._local = threading.local()

    def _batches(self, conn, n):
        step = max(1, conn.max_keys)
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    # -- operations ----------------------------------------------------------

    def _once_more(self, op, *args):
        """Run op; if kvcd restarted during it, once more on a new connection
        (to the new kvcd, with its L1 mapped)."""
        for _ in range(2):
            try:
                return op(*args)
            except _Restarted:
                pass
        return [False] * len(args[0])

    def lookup(self, keys):
        """Per key True/False (present in kvcd); all False if kvcd is down."""
        return self._once_more(self._lookup, keys)

    def put(self, keys, pages):
        """Store pages: ``pages[i]`` is a list of (address, size) fragments of
        page i. Per key True (stored now, or already stored) or False."""
        return self._once_more(self._put, keys, pages)

    def get(self, keys, pages):
        """Load pages into the fragments ``pages[i]`` (as for put). Per key
        True (copied; the object's size matched the fragments) or False."""
        return self._once_more(self._get, keys, pages)

    def _lookup(self, keys):
        """Per key True/False (present in kvcd); all False if kvcd is down."""
        keys = [key_bytes(k) for k in keys]
        out = [False] * len(keys)
        conn = self._conn()
        if conn is None or not keys:
            return out
        try:
            for a, b in self._batches(conn, len(keys)):
                _, present = conn.client.lookup(hashes=keys[a:b], **self.ns)
                out[a:b] = present
            if conn.restarted():
                raise _Restarted()
        except KvcdError as e:
            self._fail(conn, isinstance(e, _Restarted))
            if isinstance(e, _Restarted):
                raise
            return [False] * len(keys)
        return out

    def prefix(self, keys):
        """Number of leading keys present."""
        present = self.lookup(keys)
        return present.index(False) if False in present else len(present)

    def _put(self, keys, pages):
        """Store pages: ``pages[i]`` is a list of (address, size) fragments of
        page i. Per key True (stored now, or already stored) or False."""
        keys = [key_bytes(k) for k in keys]
        out = [False] * len(keys)
        conn = self._conn()
        if conn is None or not keys:
            return out
        committed = []
        try:
            for a, b in self._batches(conn, len(keys)):
                ks = keys[a:b]
                lengths = [sum(n for _, n in pages[i]) for i in range(a, b)]
                res = conn.client.reserve(hashes=ks, lengths=lengths, **self.ns)
                mine = []
                for j, code in enumerate(res.codes):
                    if code == OK:
                        dst = conn.base + res.offsets[j]
                        for addr, n in pages[a + j]:
                            ctypes.memmove(dst, addr, n)
                            dst += n
                        mine.append(j)
                    elif code == EDUPLICATE:
                        out[a + j] = True
                if mine:
                    if conn.restarted():
                        raise _Restarted()
                    codes = conn.client.commit(hashes=[ks[j] for j in mine], **self.ns)
                    for j, code in zip(mine, codes):
                        out[a + j] = code in (OK, EDUPLICATE)
                        if code == OK:
                            committed.append(ks[j])
            if conn.restarted():
                raise _Restarted()
        except KvcdError as e:
            self._fail(conn, isinstance(e, _Restarted))
            self._forget(committed)
            if isinstance(e, _Restarted):
                raise
            return [False] * len(keys)
        return out

    def _forget(self, keys):
        """After a restart during a put: remove what it may have committed
        with bytes written to the old L1. Best effort."""
        if not keys:
            return
        conn = self._conn_now()
        if conn is None:
            return
        try:
            for a, b in self._batches(conn, len(keys)):
                conn.client.remove(hashes=keys[a:b], **self.ns)
        except KvcdError:
            self._fail(conn)

    def _conn_now(self):
        self._down_until = 0.0
        return self._conn()

    def _get(self, keys, pages):
        """Load pages into the fragments ``pages[i]`` (as for put). Per key
        True (copied; the object's size matched the fragments) or False."""
        keys = [key_bytes(k) for k in keys]
        out = [False] * len(keys)
        conn = self._conn()
        if conn is None or not keys:
            return out
        try:
            for a, b in self._batches(conn, len(keys)):
                ks = keys[a:b]
                res = conn.client.map(hashes=ks, **self.ns)
                miss = [j for j, c in enumerate(res.codes) if c != OK]
                if miss:
                    # Objects only in kvcd's L2 (after a restart, or evicted):
                    # a LOOKUP brings them up, then MAP them. Not pipelined: a
                    # MAP sent behind the LOOKUP can overtake its prefetch.
                    mk = [ks[j] for j in miss]
                    _, present = conn.client.lookup(hashes=mk, **self.ns)
                    again = [j for j, p in zip(miss, present) if p]
                    if again:
                        res2 = conn.client.map(hashes=[ks[j] for j in again], **self.ns)
                        for n, j in enumerate(again):
                            res.codes[j] = res2.codes[n]
                            res.offsets[j] = res2.offsets[n]
                            res.lengths[j] = res2.lengths[n]
                held = [ks[j] for j, c in enumerate(res.codes) if c == OK]
                try:
                    if conn.restarted():
                        raise _Restarted()
                    for j, code in enumerate(res.codes):
                        want = sum(n for _, n in pages[a + j])
                        if code != OK or res.lengths[j] != want:
                            continue
                        src = conn.base + res.offsets[j]
                        for addr, n in pages[a + j]:
                            ctypes.memmove(addr, src, n)
                            src += n
                        out[a + j] = True
                finally:
                    res[:] = [None] * len(res)
                    if held and not conn.client._sock.closed:
                        conn.client.release(hashes=held, **self.ns)
            if conn.restarted():
                raise _Restarted()
        except KvcdError as e:
            self._fail(conn, isinstance(e, _Restarted))
            if isinstance(e, _Restarted):
                raise
            return [False] * len(keys)
        return out

    def remove(self, keys):
        keys = [key_bytes(k) for k in keys]
        conn = self._conn()
        if conn is None or not keys:
            return [ENOTFOUND] * len(keys)
        try:
            out = []
            for a, b in self._batches(conn, len(keys)):
                out.extend(conn.client.remove(hashes=keys[a:b], **self.ns))
            return out
        except KvcdError:
            self._fail(conn)
            return [ENOTFOUND] * len(keys)
