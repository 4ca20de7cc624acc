#!/usr/bin/python3
"""End-to-end test of the kvcd daemon through the Python client.

    /usr/bin/python3 tests/e2e_python.py KVCD_BINARY [unittest options/names]

Starts the real daemon on a private ipc:// socket in a temporary directory,
drives it with protocol/python/kvcd_client.py and with raw DEALER sockets for
malformed input, and stops it. Every socket operation has a timeout and a
watchdog bounds the whole run. The last line printed is "N passed, N failed"
(test methods); the exit status is non-zero on any failure.
"""

import array
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "protocol", "python"))
from kvcd_client import (EMSGSIZE, ESEGMENT, Client, KvcdError,  # noqa: E402
                         KvcdTimeout, LoadResult, error_name, hash_bytes, kv_rank)

OP_TIMEOUT_MS = 10000   # any single request
START_TIMEOUT_S = 10    # daemon answering PING after exec
STOP_TIMEOUT_S = 20     # daemon exiting after SIGTERM
WATCHDOG_S = 600        # the whole run
MiB = 1 << 20

BINARY = None
TMPDIR = None
DAEMONS = []            # every daemon started, killed at the end whatever happens
MAIN = None             # the shared daemon most tests talk to


class Daemon:
    """One kvcd process on ipc://TMPDIR/<name>.sock, output in <name>.log."""

    def __init__(self, name, extra_args=(), policy="LRU"):
        self.endpoint = "ipc://%s/%s.sock" % (TMPDIR, name)
        self.log_path = os.path.join(TMPDIR, name + ".log")
        args = [BINARY, "--endpoint", self.endpoint, "--l1-size-gb", "0.25",
                "--eviction-policy", policy, "--log-level", "warning"]
        args += list(extra_args)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT,
                                         start_new_session=True)
        DAEMONS.append(self)
        self.ping = self._wait_ready()

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        with Client(self.endpoint, timeout_ms=250) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("kvcd exited with %d during startup:\n%s"
                                       % (self.proc.returncode, self.log_tail()))
                try:
                    return c.ping()
                except KvcdTimeout:
                    pass
        raise RuntimeError("kvcd did not answer PING within %d s:\n%s"
                           % (START_TIMEOUT_S, self.log_tail()))

    def alive(self):
        return self.proc.poll() is None

    def terminate(self, timeout_s=STOP_TIMEOUT_S):
        """SIGTERM, then wait; returns the exit status (None if it did not exit)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:]) or "(empty log)"


def cleanup():
    for d in DAEMONS:
        d.kill()
    if TMPDIR:
        shutil.rmtree(TMPDIR, ignore_errors=True)


def setUpModule():
    global MAIN
    MAIN = Daemon("kvcd")


class RawSocket:
    """A bare DEALER for sending hand-made (possibly invalid) messages."""

    def __init__(self, endpoint):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, OP_TIMEOUT_MS)
        self.sock.connect(endpoint)

    def request(self, frames):
        """Send frames, return (decoded reply header, bulk frames)."""
        self.sock.send_multipart(frames)
        if not self.sock.poll(OP_TIMEOUT_MS, zmq.POLLIN):
            raise KvcdTimeout("no reply to a raw request")
        reply = self.sock.recv_multipart(zmq.NOBLOCK)
        return msgpack.unpackb(reply[0], raw=False), reply[1:]

    def close(self):
        self.sock.close(linger=0)


def chunk(seed, n):
    return random.Random(seed).randbytes(n)


class E2E(unittest.TestCase):

    def setUp(self):
        if not MAIN.alive():
            self.fail("kvcd exited with %s:\n%s" % (MAIN.proc.returncode, MAIN.log_tail()))
        self.c = Client(MAIN.endpoint, timeout_ms=OP_TIMEOUT_MS)
        self.model = "test/" + self._testMethodName
        self.limits = MAIN.ping

    def tearDown(self):
        self.c.close()

    def assertPings(self):
        self.assertEqual(self.c.ping()["proto"], 1)

    # -- plain operations ---------------------------------------------------

    def test_ping(self):
        p = self.c.ping()
        for k in ("server", "proto", "chunk_size", "max_frame", "max_keys",
                  "max_request", "l1_capacity"):
            self.assertIn(k, p)
        self.assertIsInstance(p["server"], str)
        self.assertEqual(p["proto"], 1)
        for k in ("chunk_size", "max_frame", "max_keys", "max_request"):
            self.assertIsInstance(p[k], int)
            self.assertGreater(p[k], 0, k)
        # --l1-size-gb 0.25: GB or GiB, the protocol does not say.
        self.assertGreaterEqual(p["l1_capacity"], 250 * 10**6 * 0.95)
        self.assertLessEqual(p["l1_capacity"], 256 * MiB)

    def test_store_lookup_load_64_chunks(self):
        n, size = 64, MiB
        datas = [os.urandom(size) for _ in range(n)]
        hashes = [os.urandom(16) for _ in range(n)]
        per_req = max(1, min(self.limits["max_keys"], self.limits["max_request"] // size,
                             8))
        self.assertLessEqual(size, self.limits["max_frame"])
        for i in range(0, n, per_req):
            self.assertEqual(self.c.store(self.model, hashes[i:i + per_req],
                                          datas[i:i + per_req]),
                             [0] * len(hashes[i:i + per_req]))
        for i in range(0, n, self.limits["max_keys"]):
            hs = hashes[i:i + self.limits["max_keys"]]
            self.assertEqual(self.c.lookup(self.model, hs), (len(hs), [True] * len(hs)))
        for i in range(0, n, per_req):
            got = self.c.load(self.model, hashes[i:i + per_req])
            self.assertIsInstance(got, LoadResult)
            self.assertEqual(got.codes, [0] * len(got))
            for j, g in enumerate(got):
                self.assertIsInstance(g, memoryview)
                self.assertEqual(g.nbytes, size)
                self.assertTrue(g == datas[i + j], "chunk %d differs" % (i + j))
        for i in range(0, n, per_req):
            self.assertEqual(self.c.remove(self.model, hashes[i:i + per_req]),
                             [0] * len(hashes[i:i + per_req]))

    def test_keep_receive_memory(self):
        # Process-wide, so in a process of its own: the opt-in takes, and large
        # frames still round-trip byte for byte (received straight into L1).
        size = min(8 * MiB, self.limits["max_frame"])
        script = (
            "import os, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "import kvcd_client\n"
            "assert kvcd_client.keep_receive_memory() is True\n"
            "c = kvcd_client.Client(sys.argv[2], timeout_ms=10000)\n"
            "d = [os.urandom(%d) for _ in range(3)]\n"
            "h = [b'keep-%%d' %% i for i in range(3)]\n"
            "for r in range(2):\n"
            "    assert c.store('test/keep', h, d) == [0, 0, 0]\n"
            "    got = c.load('test/keep', h)\n"
            "    assert got.codes == [0, 0, 0]\n"
            "    assert all(g == x for g, x in zip(got, d))\n"
            "    assert c.remove('test/keep', h) == [0, 0, 0]\n"
            "c.close()\n"
            "print('ok')\n" % size)
        pydir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "protocol",
                             "python")
        out = subprocess.run([sys.executable, "-c", script, pydir, MAIN.endpoint],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "ok")
        self.assertPings()

    def test_lookup_prefix(self):
        hs = [b"key-0", b"key-1", b"key-2", b"key-3"]
        self.assertEqual(self.c.store(self.model, [hs[0], hs[1], hs[3]],
                                      [b"a" * 100, b"b" * 200, b"d" * 300]), [0, 0, 0])
        self.assertEqual(self.c.lookup(self.model, hs), (2, [True, True, False, True]))
        self.assertEqual(self.c.lookup(self.model, hs[2:]), (0, [False, True]))
        self.assertEqual(self.c.lookup(self.model, [hs[3], hs[0]]), (2, [True, True]))

    def test_load_miss(self):
        data = chunk(1, 5000)
        self.assertEqual(self.c.store(self.model, [b"here"], [data]), [0])
        got = self.c.load(self.model, [b"gone", b"here", b"also-gone"])
        self.assertEqual(got.codes, [1010, 0, 1010])
        self.assertIsNone(got[0])
        self.assertEqual(bytes(got[1]), data)
        self.assertIsNone(got[2])

    def test_store_duplicate(self):
        before = self.c.status()["counters"]
        self.assertEqual(self.c.store(self.model, [b"dup"], [b"first"]), [0])
        self.assertEqual(self.c.store(self.model, [b"dup"], [b"first"]), [0])
        after = self.c.status()["counters"]
        self.assertEqual(after["store_dups"] - before["store_dups"], 1)
        self.assertEqual(bytes(self.c.load(self.model, [b"dup"])[0]), b"first")

    def test_remove(self):
        self.assertEqual(self.c.store(self.model, [b"r0", b"r1"], [b"x" * 10, b"y" * 10]),
                         [0, 0])
        self.assertEqual(self.c.remove(self.model, [b"r0", b"nope"]), [0, 1010])
        self.assertEqual(self.c.lookup(self.model, [b"r0", b"r1"]), (0, [False, True]))
        got = self.c.load(self.model, [b"r0"])
        self.assertEqual((got[0], got.codes), (None, [1010]))
        self.assertEqual(self.c.remove(self.model, [b"r0", b"r1"]), [1010, 0])

    def test_clear(self):
        hs = [b"c%d" % i for i in range(5)]
        self.assertEqual(self.c.store(self.model, hs, [b"z" * 64] * 5), [0] * 5)
        clears = self.c.status()["counters"]["clears"]
        removed = self.c.clear()
        self.assertIsInstance(removed, int)
        self.assertGreaterEqual(removed, 5)
        self.assertEqual(self.c.lookup(self.model, hs), (0, [False] * 5))
        st = self.c.status()
        self.assertEqual(st["l1"]["objects"], 0)
        self.assertEqual(st["l1"]["used"], 0)
        self.assertGreater(st["counters"]["clears"], clears)
        self.assertEqual(self.c.clear(), 0)

    def test_status(self):
        st = self.c.status()
        for k, t in (("server", str), ("uptime_s", float), ("inflight", int),
                     ("l1", dict), ("counters", dict)):
            self.assertIsInstance(st.get(k), t, k)
        for k, t in (("capacity", int), ("used", int), ("objects", int),
                     ("eviction_policy", str), ("high_watermark", float),
                     ("low_watermark", float), ("largest_free", int)):
            self.assertIsInstance(st["l1"].get(k), t, "l1." + k)
        self.assertEqual(st["l1"]["eviction_policy"].lower(), "lru")
        names = ("requests errors stores store_bytes store_dups store_nospace lookups "
                 "lookup_keys lookup_hits loads load_hits load_misses load_bytes "
                 "removes evictions evicted_bytes clears").split()
        for k in names:
            self.assertIsInstance(st["counters"].get(k), int, "counters." + k)

        c0, data = st["counters"], chunk(2, 3000)
        self.assertEqual(self.c.store(self.model, [b"s0"], [data]), [0])
        self.assertEqual(self.c.lookup(self.model, [b"s0", b"s1"]), (1, [True, False]))
        self.assertEqual(self.c.load(self.model, [b"s0", b"s1"]).codes, [0, 1010])
        self.assertEqual(self.c.remove(self.model, [b"s0"]), [0])
        raw = RawSocket(MAIN.endpoint)
        try:
            self.assertEqual(raw.request([self.hdr(op=99)])[0]["err"], 1003)
        finally:
            raw.close()
        st2 = self.c.status()
        c1 = st2["counters"]
        d = {k: c1[k] - c0[k] for k in names}
        self.assertGreaterEqual(d["requests"], 6)
        self.assertGreaterEqual(d["errors"], 1)
        expect = {"stores": 1, "store_bytes": 3000, "lookups": 1, "lookup_keys": 2,
                  "lookup_hits": 1, "loads": 1, "load_hits": 1, "load_misses": 1,
                  "load_bytes": 3000, "removes": 1}
        self.assertEqual({k: d[k] for k in expect}, expect)
        # The loop's clock has millisecond steps: six requests can fit in one.
        self.assertGreaterEqual(st2["uptime_s"], st["uptime_s"])

    # -- keys and buffers ---------------------------------------------------

    def test_key_fields(self):
        m = self.model
        self.assertEqual(self.c.store(m, [b"k"], [b"v"], world_size=2, worker_id=1,
                                      group=7, salt="s1"), [0])
        self.assertEqual(kv_rank(2, 1), 0x02010201)
        self.assertEqual(self.c.lookup(m, [b"k"], kv_rank=0x02010201, group=7,
                                       salt="s1"), (1, [True]))
        for other in (dict(world_size=2, worker_id=0, group=7, salt="s1"),
                      dict(world_size=2, worker_id=1, group=8, salt="s1"),
                      dict(world_size=2, worker_id=1, group=7, salt="s2"),
                      dict(world_size=2, worker_id=1, group=7, salt=""),
                      dict(group=7, salt="s1")):
            self.assertEqual(self.c.lookup(m, [b"k"], **other), (0, [False]), other)
        self.assertEqual(self.c.lookup(m + "x", [b"k"], world_size=2, worker_id=1,
                                       group=7, salt="s1"), (0, [False]))

    def test_int_hashes(self):
        self.assertEqual(hash_bytes(5), b"\0" * 7 + b"\5")
        self.assertEqual(hash_bytes(-1), b"\xff" * 8)
        self.assertRaises(ValueError, hash_bytes, 1 << 64)
        self.assertRaises(TypeError, hash_bytes, "abc")
        self.assertEqual(self.c.store(self.model, [5, -1], [b"five", b"minus"]), [0, 0])
        self.assertEqual(self.c.lookup(self.model, [b"\0" * 7 + b"\5", (1 << 64) - 1]),
                         (2, [True, True]))

    def test_buffer_types(self):
        big = bytearray(chunk(3, 300000))
        floats = array.array("d", range(20000))
        grid = memoryview(bytearray(chunk(4, 4096))).cast("B", (64, 64))
        datas = [big, memoryview(big)[1000:200000], floats, grid, b"tiny"]
        hashes = [bytearray(b"h0"), memoryview(b"h1"), b"h2", b"h3", b"h4"]
        self.assertEqual(self.c.store(self.model, hashes, datas), [0] * 5)
        got = self.c.load(self.model, [b"h0", b"h1", b"h2", b"h3", b"h4"])
        self.assertEqual(got.codes, [0] * 5)
        self.assertEqual(bytes(got[0]), bytes(big))
        self.assertEqual(bytes(got[1]), bytes(big[1000:200000]))
        self.assertEqual(bytes(got[2]), floats.tobytes())
        self.assertEqual(bytes(got[3]), grid.tobytes())
        self.assertEqual(bytes(got[4]), b"tiny")
        with self.assertRaises(ValueError):
            self.c.store(self.model, [b"nc"], [memoryview(big)[::2]])
        with self.assertRaises(ValueError):
            self.c.store(self.model, [b"a", b"b"], [b"one"])

    # -- pipelining -----------------------------------------------------------

    def test_pipelining_one_client_out_of_order(self):
        n = 100
        datas = [chunk(100 + i, 1 + i * 977) for i in range(n)]
        rids = [self.c.submit_store(self.model, [b"p%d" % i], [datas[i]])
                for i in range(n)]
        self.assertEqual(self.c.pending, n)
        for rid in reversed(rids):
            self.assertEqual(self.c.wait(rid), [0])
        rids = {}
        for i in range(n):
            rids[self.c.submit_load(self.model, [b"p%d" % i, b"missing"])] = ("load", i)
            rids[self.c.submit_lookup(self.model, [b"p%d" % i, b"missing"])] = ("lk", i)
        rids[self.c.submit_ping()] = ("ping", 0)
        order = list(rids)
        random.Random(5).shuffle(order)
        for rid in order:
            kind, i = rids[rid]
            r = self.c.wait(rid)
            if kind == "load":
                self.assertEqual(r.codes, [0, 1010])
                self.assertEqual(bytes(r[0]), datas[i])
            elif kind == "lk":
                self.assertEqual(r, (1, [True, False]))
            else:
                self.assertEqual(r["proto"], 1)
        self.assertEqual(self.c.pending, 0)
        with self.assertRaises(KeyError):
            self.c.wait(order[0])

    def test_pipelining_8_threads(self):
        errors = []

        def worker(t):
            try:
                with Client(MAIN.endpoint, timeout_ms=OP_TIMEOUT_MS) as c:
                    rnd = random.Random(t)
                    model = "%s/%d" % (self.model, t)
                    datas = [rnd.randbytes(rnd.randint(1, 100000)) for _ in range(100)]
                    rids = [c.submit_store(model, [b"t%d" % i], [datas[i]])
                            for i in range(100)]
                    order = list(enumerate(rids))
                    rnd.shuffle(order)
                    for i, rid in order:
                        if c.wait(rid) != [0]:
                            errors.append("thread %d store %d failed" % (t, i))
                            return
                    rids = []
                    for i in range(100):
                        hs = [b"t%d" % i, b"t%d" % ((i + 1) % 100), b"absent"]
                        if i % 2:
                            rids.append((i, "load", c.submit_load(model, hs)))
                        else:
                            rids.append((i, "lookup", c.submit_lookup(model, hs)))
                    for i, kind, rid in reversed(rids):
                        r = c.wait(rid)
                        if kind == "lookup":
                            ok = r == (2, [True, True, False])
                        else:
                            ok = (r.codes == [0, 0, 1010] and r[0] == datas[i]
                                  and r[1] == datas[(i + 1) % 100] and r[2] is None)
                        if not ok:
                            errors.append("thread %d %s %d wrong: %r" % (t, kind, i, r))
                            return
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                errors.append("thread %d: %r" % (t, e))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
            self.assertFalse(th.is_alive(), "a pipelining thread hung")
        self.assertEqual(errors, [])

    def test_wait_timeout(self):
        with Client("ipc://%s/nobody.sock" % TMPDIR, timeout_ms=200) as c:
            t0 = time.monotonic()
            with self.assertRaises(KvcdTimeout) as cm:
                c.ping()
            self.assertLess(time.monotonic() - t0, 5)
            self.assertEqual((cm.exception.code, cm.exception.name), (1020, "ECONNECT"))
            self.assertEqual(c.pending, 0)

    # -- bad input over a raw socket ------------------------------------------

    def raw_error(self, frames, code, req_id=None):
        raw = RawSocket(MAIN.endpoint)
        try:
            hdr, bulk = raw.request(frames)
        finally:
            raw.close()
        self.assertEqual(hdr.get("err"), code, hdr)
        self.assertEqual(bulk, [], "error replies carry no bulk frames")
        self.assertEqual(hdr.get("v"), 1)
        self.assertEqual(hdr.get("ename"), error_name(code))
        self.assertIsInstance(hdr.get("msg"), str)
        self.assertLessEqual(set(hdr), {"v", "id", "op", "err", "ename", "msg"}, hdr)
        if req_id is not None:
            self.assertEqual(hdr.get("id"), req_id, hdr)
        self.assertPings()
        return hdr

    @staticmethod
    def hdr(**kw):
        h = {"v": 1, "id": 4242, "op": 1}
        h.update(kw)
        return msgpack.packb({k: v for k, v in h.items() if v is not None},
                             use_bin_type=True)

    def test_bad_garbage_frame(self):
        hdr = self.raw_error([b"\xc1\xc1 this is not msgpack"], 1001)
        self.assertEqual((hdr.get("id"), hdr.get("op"), hdr.get("ename")),
                         (0, 0, "EMALFORMED"))

    def test_bad_not_a_map(self):
        self.raw_error([msgpack.packb([1, 4242, 1])], 1001, 0)
        self.raw_error([b""], 1001, 0)
        self.raw_error([self.hdr() + b"\x00"], 1001)

    def test_bad_version(self):
        hdr = self.raw_error([self.hdr(v=2)], 1002, 4242)
        self.assertEqual(hdr["ename"], "EVERSION")

    def test_bad_op(self):
        hdr = self.raw_error([self.hdr(op=99)], 1003, 4242)
        self.assertEqual((hdr["ename"], hdr.get("op")), ("EUNKNOWNOP", 99))

    def test_bad_frame_count(self):
        store = self.hdr(op=2, model=self.model, hashes=[b"f0", b"f1"])
        hdr = self.raw_error([store, b"only one"], 1008, 4242)
        self.assertEqual((hdr["ename"], hdr.get("op")), ("EFRAMES", 2))
        self.assertEqual(self.c.lookup(self.model, [b"f0", b"f1"]), (0, [False, False]))
        self.raw_error([store, b"a", b"b", b"c"], 1008, 4242)
        self.raw_error([self.hdr(op=4, model=self.model, hashes=[b"f0"]), b"x"], 1008)

    def test_bad_missing_and_fields(self):
        self.raw_error([self.hdr(op=3, hashes=[b"h"])], 1004, 4242)
        self.raw_error([self.hdr(op=3, model=self.model)], 1004, 4242)
        self.raw_error([msgpack.packb({"v": 1, "op": 1})], 1004)
        self.raw_error([msgpack.packb({"id": 5, "op": 1})], 1004, 5)
        self.raw_error([msgpack.packb({"v": 1, "id": "5", "op": 1})], 1005, 0)
        self.raw_error([self.hdr(v="1")], 1005, 4242)
        for bad in (dict(hashes="notalist"), dict(hashes=["str"]), dict(hashes=[]), dict(hashes=[b""]),
                    dict(hashes=[b"x" * 65]), dict(hashes=[b"h"], model=""),
                    dict(hashes=[b"h"], model=123), dict(hashes=[b"h"], salt="a/b"),
                    dict(hashes=[b"h"], model="m" * 1025), dict(hashes=[b"h"], model="a\0b"),
                    dict(hashes=[b"h"], salt="s" * 129), dict(hashes=[b"h"], salt="a@b"),
                    dict(hashes=[b"h"], salt="a\\b"), dict(hashes=[b"h"], group="7"),
                    dict(hashes=[b"h"], kv_rank=1 << 32), dict(hashes=[b"h"], kv_rank=-1),
                    dict(hashes=[b"h"], world_size=2, worker_id=2),
                    dict(hashes=[b"h"], world_size=0)):
            fields = {"model": self.model}
            fields.update(bad)
            self.raw_error([self.hdr(op=3, **fields)], 1005, 4242)

    def test_field_bounds_accepted(self):
        m = "m" * 1024
        hs = [b"x" * 64, b"y"]
        self.assertEqual(self.c.store(m, hs, [b"1", b"2"], world_size=255, worker_id=254,
                                      salt="s" * 128, group=(1 << 32) - 1), [0, 0])
        self.assertEqual(self.c.lookup(m, hs, kv_rank=kv_rank(255, 254), salt="s" * 128,
                                       group=(1 << 32) - 1), (2, [True, True]))
        self.assertEqual(self.c.remove(m, hs, kv_rank=0xFFFEFFFE, salt="s" * 128,
                                       group=(1 << 32) - 1), [0, 0])

    def test_bad_bulk_frames_on_keyless_ops(self):
        for op in (1, 6, 7):
            self.raw_error([self.hdr(op=op), b"x"], 1008, 4242)

    def test_bad_limits(self):
        max_keys = self.limits["max_keys"]
        if max_keys <= 1 << 20:
            hs = [b"%d" % i for i in range(max_keys + 1)]
            self.raw_error([self.hdr(op=3, model=self.model, hashes=hs)], 1007, 4242)
        # ETOOLARGE: Limits.test_request_limits, on a daemon with small limits.

    def test_ignores_unknown_fields_and_echoes_ids(self):
        raw = RawSocket(MAIN.endpoint)
        try:
            for rid in (1, (1 << 64) - 1, 1 << 40):
                hdr, bulk = raw.request([msgpack.packb(
                    {"v": 1, "id": rid, "op": 1, "future": {"x": [1, 2]}})])
                self.assertEqual((hdr["err"], hdr["id"], hdr["op"], bulk), (0, rid, 1, []))
        finally:
            raw.close()

    # -- last: the shared daemon survived all of the above ---------------------

    def test_zz_daemon_still_alive(self):
        self.assertTrue(MAIN.alive(), MAIN.log_tail())
        self.assertPings()


class SharedMemory(unittest.TestCase):
    """The shared-memory data plane through the Python client, on MAIN."""

    def setUp(self):
        if not MAIN.alive():
            self.fail("kvcd exited with %s:\n%s" % (MAIN.proc.returncode, MAIN.log_tail()))
        self.c = Client(MAIN.endpoint, timeout_ms=OP_TIMEOUT_MS)
        self.model = "test/shm/" + self._testMethodName

    def tearDown(self):
        self.c.close()

    def test_segment_roundtrip(self):
        sizes = [MiB, 4 * MiB, 1, 4097, 300001]
        hashes = [b"shm-%d" % i for i in range(len(sizes))]
        offsets, pos = [], 0
        for n in sizes:
            offsets.append(pos)
            pos += (n + 4095) // 4096 * 4096
        half = pos
        datas = [chunk(40 + i, n) for i, n in enumerate(sizes)]
        before = self.c.status()["segments"]
        with self.c.create_segment(2 * half) as seg:
            self.assertIsInstance(seg.buf, memoryview)
            self.assertFalse(seg.buf.readonly)
            self.assertEqual(seg.buf.nbytes, 2 * half)
            self.assertEqual(self.c.status()["segments"], before + 1)
            for o, d in zip(offsets, datas):
                seg.buf[o:o + len(d)] = d
            self.assertEqual(self.c.store_shm(self.model, hashes, seg, offsets, sizes),
                             [0] * len(sizes))
            self.assertEqual(self.c.lookup(self.model, hashes)[0], len(sizes))
            # Back into the other half of the segment, byte-exact.
            got = self.c.load_shm(self.model, hashes + [b"missing"], seg,
                                  [half + o for o in offsets] + [0],
                                  sizes + [MiB])
            self.assertIsInstance(got, LoadResult)
            self.assertEqual(got.codes, [0] * len(sizes) + [1010])
            self.assertEqual(got.lengths, sizes + [0])
            self.assertIsNone(got[-1])
            for i, d in enumerate(datas):
                self.assertEqual(got[i].nbytes, len(d))
                self.assertTrue(got[i] == d, "key %d differs" % i)
                self.assertTrue(seg.buf[half + offsets[i]:half + offsets[i] + len(d)] == d)
            del got
            # Stored through shared memory, loaded over frames.
            frames = self.c.load(self.model, hashes)
            for f, d in zip(frames, datas):
                self.assertTrue(f == d)
            # A capacity that is too small: EMSGSIZE, the needed size, nothing written.
            seg.buf[half:half + 8] = b"\xee" * 8
            small = self.c.load_shm(self.model, hashes[:1], seg, [half], [sizes[0] - 1])
            self.assertEqual((small.codes, small.lengths, small[0]),
                             ([EMSGSIZE], [sizes[0]], None))
            self.assertEqual(bytes(seg.buf[half:half + 8]), b"\xee" * 8)
            # Pipelined.
            rid = self.c.submit_store_shm(self.model, [b"piped"], seg, [0], [1000])
            self.assertEqual(self.c.wait(rid), [0])
            self.assertEqual(self.c.load(self.model, [b"piped"])[0], datas[0][:1000])
        self.assertTrue(seg.closed)
        self.assertEqual(self.c.status()["segments"], before)
        counters = self.c.status()["counters"]
        self.assertGreaterEqual(counters["shm_stores"], len(sizes) + 1)
        self.assertGreaterEqual(counters["shm_loads"], len(sizes))

    def test_segment_errors(self):
        with self.c.create_segment(MiB) as seg:
            for off, n in ((MiB, 1), (MiB - 1, 2), ((1 << 64) - 1, 1)):
                with self.assertRaises(KvcdError) as e:
                    self.c.store_shm(self.model, [b"h"], seg, [off], [n])
                self.assertEqual((e.exception.code, e.exception.name), (1005, "EBADFIELD"))
                self.assertIn("offsets[0]", e.exception.message)
            with self.assertRaises(KvcdError) as e:
                self.c.load_shm(self.model, [b"h"], seg, [0], [MiB + 1])
            self.assertEqual(e.exception.name, "EBADFIELD")
            self.assertEqual(self.c.lookup(self.model, [b"h"]), (0, [False]))
            # Another connection cannot use this one's segment.
            with Client(MAIN.endpoint, timeout_ms=OP_TIMEOUT_MS) as other:
                with self.assertRaises(KvcdError) as e:
                    other.store_shm(self.model, [b"h"], seg, [0], [10])
                self.assertEqual(e.exception.code, ESEGMENT)
        with self.assertRaises(ValueError):
            self.c.store_shm(self.model, [b"h"], seg, [0], [10])
        # Unknown segment ids, and memfds the server must refuse, by hand.
        raw = RawSocket(MAIN.endpoint)
        try:
            for op, extra in ((10, {"model": "m", "hashes": [b"h"], "offsets": [0],
                                    "lengths": [1]}),
                              (11, {"model": "m", "hashes": [b"h"], "offsets": [0],
                                    "capacities": [1]}), (9, {})):
                fields = {"v": 1, "id": 7, "op": op, "segment": 999999}
                fields.update(extra)
                hdr, _ = raw.request([msgpack.packb(fields)])
                self.assertEqual((hdr["err"], hdr["ename"]), (ESEGMENT, "ESEGMENT"), hdr)
                self.assertIn("unknown segment 999999", hdr["msg"])
            fd = os.memfd_create("not-kvcd", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.ftruncate(fd, MiB)
                hdr, _ = raw.request([msgpack.packb({"v": 1, "id": 8, "op": 8,
                                                     "pid": os.getpid(), "fd": fd,
                                                     "size": MiB})])
                self.assertEqual(hdr["err"], ESEGMENT)
                self.assertIn("not a kvcd memfd segment", hdr["msg"])
            finally:
                os.close(fd)
            fd = os.memfd_create("kvcd-unsealed", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, MiB)
                hdr, _ = raw.request([msgpack.packb({"v": 1, "id": 9, "op": 8,
                                                     "pid": os.getpid(), "fd": fd,
                                                     "size": MiB})])
                self.assertEqual(hdr["err"], ESEGMENT)
                self.assertIn("sealed", hdr["msg"])
            finally:
                os.close(fd)
        finally:
            raw.close()


class ZeroCopy(unittest.TestCase):
    """Reserve/commit and map/release on the shared L1, through the Python
    client's memoryviews, on MAIN."""

    def setUp(self):
        if not MAIN.alive():
            self.fail("kvcd exited with %s:\n%s" % (MAIN.proc.returncode, MAIN.log_tail()))
        self.c = Client(MAIN.endpoint, timeout_ms=OP_TIMEOUT_MS)
        self.model = "test/zc/" + self._testMethodName

    def tearDown(self):
        self.c.close()

    def test_reserve_commit_map_release(self):
        from kvcd_client import EDUPLICATE, ENOTFOUND, OK
        l1 = self.c.map_l1()
        self.assertTrue(l1.name.startswith("/kvcd-"))
        self.assertEqual(l1.buf.nbytes, self.c.ping()["l1_size"])
        sizes = [MiB, 3 * MiB + 5, 4096]
        hashes = [b"zc-%d" % i for i in range(len(sizes))]
        datas = [chunk(700 + i, n) for i, n in enumerate(sizes)]
        got = self.c.reserve(self.model, hashes, sizes)
        self.assertEqual(got.codes, [OK] * 3)
        for view, data in zip(got, datas):
            self.assertFalse(view.readonly)
            view[:] = data            # in place: no frame carries it
        del view
        self.assertEqual(self.c.lookup(self.model, hashes)[0], 0)
        self.assertEqual(self.c.commit(self.model, hashes), [OK] * 3)
        self.assertEqual(self.c.reserve(self.model, hashes[:1], [1]).codes, [EDUPLICATE])
        # Frames see the same bytes.
        loaded = self.c.load(self.model, hashes)
        self.assertEqual([bytes(x) for x in loaded], datas)
        mapped = self.c.map(self.model, hashes + [b"zc-missing"])
        self.assertEqual(mapped.codes, [OK] * 3 + [ENOTFOUND])
        self.assertEqual(mapped.lengths[:3], sizes)
        for view, data in zip(mapped, datas):
            self.assertTrue(view.readonly)
            self.assertTrue(view == data)
        try:
            import numpy
        except ImportError:
            numpy = None
        if numpy is not None:
            arr = numpy.frombuffer(mapped[2], dtype=numpy.uint8)
            self.assertEqual(arr.tobytes(), datas[2])
            del arr
        del mapped, view
        self.assertEqual(self.c.release(self.model, hashes), [OK] * 3)
        self.assertEqual(self.c.release(self.model, hashes[:1]), [ENOTFOUND])
        st = self.c.status()
        self.assertEqual(st["zero_copy"]["leases"], 0)
        self.assertEqual(st["l1"]["shm_name"], l1.name)

    def test_lookup_map_prefix(self):
        from kvcd_client import ENOTFOUND, OK
        l1 = self.c.map_l1()
        sizes = [4096, 2 * MiB + 3, 70000]
        hashes = [b"zclm-%d" % i for i in range(len(sizes))]
        datas = [chunk(800 + i, n) for i, n in enumerate(sizes)]
        got = self.c.reserve(self.model, hashes, sizes)
        for view, data in zip(got, datas):
            view[:] = data
        del got, view
        self.assertEqual(self.c.commit(self.model, hashes), [OK] * 3)
        # The first two, then a gap: the prefix is 2, each leased in place.
        res = self.c.lookup_map(self.model, hashes[:2] + [b"zclm-gap", hashes[2]])
        self.assertEqual(res.prefix, 2)
        self.assertEqual(len(res), 2)
        self.assertEqual(res.lengths, sizes[:2])
        for view, data in zip(res, datas):
            self.assertTrue(view.readonly)
            self.assertTrue(view == data)
            self.assertEqual(view.obj, l1.buf.obj)
        del res, view
        self.assertEqual(self.c.status()["zero_copy"]["leases"], 2)
        self.assertEqual(self.c.release(self.model, hashes[:2]), [OK] * 2)
        self.assertEqual(self.c.release(self.model, hashes[:1]), [ENOTFOUND])
        self.assertEqual(self.c.lookup_map(self.model, [b"zclm-gap"]).prefix, 0)

    def test_abort_and_second_reserver(self):
        from kvcd_client import EBUSY, ENOTFOUND, OK
        h = [b"zc-busy"]
        other = Client(MAIN.endpoint, timeout_ms=OP_TIMEOUT_MS)
        try:
            self.assertEqual(self.c.reserve(self.model, h, [8192]).codes, [OK])
            self.assertEqual(other.reserve(self.model, h, [8192]).codes, [EBUSY])
            self.assertEqual(other.abort(self.model, h), [ENOTFOUND])
            self.assertEqual(self.c.abort(self.model, h), [OK])
            self.assertEqual(other.reserve(self.model, h, [8192]).codes, [OK])
            self.assertEqual(other.commit(self.model, h), [OK])
        finally:
            other.close()
        self.assertEqual(self.c.lookup(self.model, h)[0], 1)


class Limits(unittest.TestCase):
    """Each test on its own daemon, so filling or breaking it spares the others."""

    def tearDown(self):
        if hasattr(self, "d"):
            self.d.kill()

    def test_request_limits(self):
        self.d = Daemon("kvcd-lim", ["--max-frame-mb", "1", "--max-request-mb", "2",
                                     "--max-keys", "8"])
        p = self.d.ping
        self.assertEqual((p["max_frame"], p["max_request"], p["max_keys"]),
                         (MiB, 2 * MiB, 8))
        raw = RawSocket(self.d.endpoint)
        try:
            def err(frames):
                hdr, bulk = raw.request(frames)
                self.assertEqual((hdr.get("id"), bulk), (7, []))
                return hdr.get("err")
            store = lambda n: E2E.hdr(id=7, op=2, model="m",  # noqa: E731
                                      hashes=[b"%d" % i for i in range(n)])
            self.assertEqual(err([store(1), bytes(MiB + 1)]), 1006)
            self.assertEqual(err([store(3), bytes(MiB), bytes(MiB), b"x"]), 1006)
            self.assertEqual(err([store(2), bytes(MiB), bytes(MiB)]), 0)
            self.assertEqual(err([E2E.hdr(id=7, op=3, model="m",
                                          hashes=[b"%d" % i for i in range(9)])]), 1007)
            self.assertEqual(err([E2E.hdr(id=7, op=3, model="m",
                                          hashes=[b"%d" % i for i in range(8)])]), 0)
        finally:
            raw.close()
        with Client(self.d.endpoint, timeout_ms=OP_TIMEOUT_MS) as c:
            self.assertEqual(c.lookup("m", [b"0", b"1", b"2"]), (2, [True, True, False]))

    def test_transport_drops_huge_frame(self):
        # A frame the daemon would never accept is not buffered: the transport
        # reads and drops it, and the request is still answered ETOOLARGE on a
        # connection that stays in sync.
        self.d = Daemon("kvcd-huge", ["--max-frame-mb", "1"])
        raw = RawSocket(self.d.endpoint)
        try:
            hdr, bulk = raw.request([E2E.hdr(id=9, op=2, model="m", hashes=[b"h"]),
                                     bytes(8 * MiB)])
            self.assertEqual((hdr.get("id"), hdr.get("err"), bulk), (9, 1006, []))
            self.assertIn("not read", hdr.get("msg", ""))
            hdr, _ = raw.request([E2E.hdr(id=10, op=1)])
            self.assertEqual((hdr.get("id"), hdr.get("err", 0)), (10, 0))
        finally:
            raw.close()
        with Client(self.d.endpoint, timeout_ms=OP_TIMEOUT_MS) as c:
            self.assertEqual(c.ping()["proto"], 1)
            self.assertEqual(c.lookup("m", [b"h"]), (0, [False]))

    def test_noop_policy_nospace(self):
        self.d = Daemon("kvcd-noop", policy="noop")
        with Client(self.d.endpoint, timeout_ms=OP_TIMEOUT_MS) as c:
            data, results = os.urandom(MiB), []
            for i in range(0, 320, 8):
                results += c.store("m", [b"%d" % j for j in range(i, i + 8)], [data] * 8)
            self.assertLessEqual(set(results), {0, 1009})
            self.assertIn(1009, results)
            stored = results.count(0)
            self.assertGreater(stored, 128)
            st = c.status()
            self.assertEqual(st["counters"]["store_nospace"], results.count(1009))
            self.assertEqual(st["counters"]["evictions"], 0)
            self.assertEqual(st["l1"]["objects"], stored)
            first = results.index(0)
            got = c.load("m", [b"%d" % first])
            self.assertTrue(got[0] == data)

    def test_lru_evicts_least_recently_used(self):
        self.d = Daemon("kvcd-lru")
        with Client(self.d.endpoint, timeout_ms=OP_TIMEOUT_MS) as c:
            data = os.urandom(MiB)
            key = lambda i: b"%d" % i  # noqa: E731
            for i in range(0, 200, 8):
                self.assertEqual(c.store("m", [key(j) for j in range(i, i + 8)],
                                         [data] * 8), [0] * 8)
            self.assertEqual(c.lookup("m", [key(0)]), (1, [True]))  # touch key 0
            for i in range(200, 400, 8):
                self.assertEqual(c.store("m", [key(j) for j in range(i, i + 8)],
                                         [data] * 8), [0] * 8)
            st = c.status()
            self.assertGreater(st["counters"]["evictions"], 0)
            self.assertGreaterEqual(st["counters"]["evicted_bytes"],
                                    st["counters"]["evictions"] * MiB)
            self.assertLessEqual(st["l1"]["used"], st["l1"]["capacity"])
            self.assertEqual(c.lookup("m", [key(0), key(1), key(399)])[1],
                             [True, False, True])
            self.assertTrue(c.load("m", [key(399)])[0] == data)


class Shutdown(unittest.TestCase):

    def test_sigterm_with_requests_in_flight(self):
        d = Daemon("kvcd-term")
        with Client(d.endpoint, timeout_ms=OP_TIMEOUT_MS) as c:
            data = os.urandom(MiB)
            rids = [c.submit_store("term", [b"t%d" % i], [data]) for i in range(64)]
            rids += [c.submit_lookup("term", [b"t%d" % i]) for i in range(64)]
            self.assertEqual(c.wait(rids[0]), [0])
            rc = d.terminate()
            self.assertIsNotNone(rc, "kvcd did not exit within %d s of SIGTERM"
                                 % STOP_TIMEOUT_S)
            self.assertEqual(rc, 0, d.log_tail())
            # Whatever answers did arrive must be well-formed.
            for rid in rids[1:]:
                try:
                    r = c.wait(rid, timeout_ms=50)
                except KvcdTimeout:
                    c.discard(rid)
                except KvcdError as e:
                    self.assertIn(e.name, ("ESHUTDOWN", "ECANCELED"), e)
                else:
                    self.assertIn(r, ([0], (1, [True]), (0, [False])))


class CountingResult(unittest.TextTestResult):
    passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        CountingResult.passed += 1


def main():
    global BINARY, TMPDIR
    if len(sys.argv) < 2:
        print("usage: %s KVCD_BINARY [unittest args]" % sys.argv[0], file=sys.stderr)
        return 2
    BINARY = os.path.abspath(sys.argv[1])
    TMPDIR = tempfile.mkdtemp(prefix="kvcd-e2e-")
    prog = None
    total = [0]

    def watchdog():
        print("\nwatchdog: run exceeded %d s, killing kvcd" % WATCHDOG_S, file=sys.stderr)
        for d in DAEMONS:
            print("--- %s log ---\n%s" % (d.endpoint, d.log_tail()), file=sys.stderr)
        cleanup()
        print("%d passed, %d failed" % (CountingResult.passed,
                                        max(1, total[0] - CountingResult.passed)))
        sys.stdout.flush()
        os._exit(1)

    def on_signal(signum, frame):
        raise SystemExit("interrupted by signal %d" % signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    timer = threading.Timer(WATCHDOG_S, watchdog)
    timer.daemon = True
    timer.start()
    try:
        runner = unittest.TextTestRunner(resultclass=CountingResult, verbosity=2,
                                         stream=sys.stderr)
        loader = unittest.TestLoader()
        names = sys.argv[2:]
        module = sys.modules[__name__]
        suite = (loader.loadTestsFromNames(names, module) if names
                 else loader.loadTestsFromModule(module))
        total[0] = suite.countTestCases()
        prog = runner.run(suite)
        if not prog.wasSuccessful():
            for d in DAEMONS:
                print("--- %s log ---\n%s" % (d.endpoint, d.log_tail()), file=sys.stderr)
    finally:
        timer.cancel()
        cleanup()
    passed = CountingResult.passed
    failed = total[0] - passed
    if failed == 0 and prog is not None and not prog.wasSuccessful():
        failed = 1  # module setup/teardown failed after every test passed
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
