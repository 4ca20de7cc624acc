"""kvcd's LMCache 0.5.6 codec, hasher and fs files, checked against lmcache itself.

    BUILD/venv/bin/python tests/python/test_lmcache_compat.py KVCD_BINARY SHIM.so \
        [unittest options/names]

Runs in the virtual environment of scripts/test-venv.sh (lmcache==0.5.6 with
--no-deps, torch 2.13.0 CPU). Uses lmcache's own classes throughout:

- its ZMQ client (ZmqMultiprocessClient over MessageQueueClient) sends real
  requests to a ROUTER socket here; kvcd's decoder (the shim, ctypes) must read
  every parameter back; kvcd's encoders answer, and lmcache's client must
  decode the answers to the values meant (and msgspec must produce the same
  bytes);
- its TokenHasher: kvcd's chunk hashes must equal it on the same tokens;
- its fs L2 adapter (FSL2Adapter, on CPU): a directory it writes is served by
  the real kvcd daemon, and one that kvcd writes (format "lmcache") is read
  back by it.

Every socket wait has a timeout and a watchdog bounds the run. The last line
printed is "N passed, N failed"; the exit status is non-zero on any failure.
"""

import ctypes
import json
import logging
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

logging.disable(logging.WARNING)
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import msgspec  # noqa: E402
import zmq  # noqa: E402

from lmcache.v1.distributed.api import ObjectKey, ipc_key_to_object_keys  # noqa: E402
from lmcache.v1.distributed.l2_adapters.fs_l2_adapter import (  # noqa: E402
    FSL2Adapter, FSL2AdapterConfig, _object_key_to_filename)
from lmcache.v1.multiprocess.custom_types import (  # noqa: E402
    BlockAllocationRecord, IPCCacheServerKey, PrepareRetrieveResponse,
    PrepareStoreResponse, RegisterEngineDrivenContextPayload,
    RegisterEngineDrivenContextResponse)
from lmcache.v1.multiprocess.rpc import get_rpc_specs  # noqa: E402
from lmcache.v1.multiprocess.token_hasher import TokenHasher  # noqa: E402
from lmcache.v1.multiprocess.transport.zmq_impl.client import (  # noqa: E402
    ZmqMultiprocessClient)
from lmcache.v1.multiprocess.transport.zmq_impl.mq import (  # noqa: E402
    MessageQueueClient, msgspec_encode)
from lmcache.v1.multiprocess.transport.zmq_impl.wire import (  # noqa: E402
    LEGACY_OPERATION_IDS)

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(SRC, "protocol", "python"))
from kvcd_client import Client, KvcdTimeout  # noqa: E402

WATCHDOG_S = 600
OP_TIMEOUT_S = 10
BINARY = None
SHIM = None
TMPDIR = None
DAEMONS = []


# ---- the C side -------------------------------------------------------------

def load_shim(path):
    lib = ctypes.CDLL(path)
    lib.kvcd_shim_decode.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                                     ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    lib.kvcd_shim_encode.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.kvcd_shim_encode.restype = ctypes.c_long
    lib.kvcd_shim_chunk_hashes.argtypes = [
        ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t,
        ctypes.c_int64, ctypes.c_char_p, ctypes.c_size_t]
    lib.kvcd_shim_chunk_hashes.restype = ctypes.c_size_t
    lib.kvcd_shim_none_hash.argtypes = [ctypes.c_char_p]
    lib.kvcd_shim_hash_select.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.kvcd_shim_op_info.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                                      ctypes.POINTER(ctypes.c_size_t)]
    lib.kvcd_shim_op_name.restype = ctypes.c_char_p
    return lib


def c_decode(frames):
    lens = (ctypes.c_size_t * len(frames))(*[len(f) for f in frames])
    out = ctypes.create_string_buffer(1 << 20)
    SHIM.kvcd_shim_decode(b"".join(frames), lens, len(frames), out, len(out))
    return json.loads(out.value.decode())


def c_encode(spec):
    out = ctypes.create_string_buffer(1 << 16)
    n = SHIM.kvcd_shim_encode(json.dumps(spec).encode(), out, len(out))
    if n == -2:
        return None
    assert n >= 0, "bad encode spec %r" % (spec,)
    return out.raw[:n]


def c_chunk_hashes(tokens, chunk, start=0, end=-1):
    arr = (ctypes.c_uint32 * max(1, len(tokens)))(*tokens)
    cap = len(tokens) // chunk + 1
    out = ctypes.create_string_buffer(32 * cap)
    n = SHIM.kvcd_shim_chunk_hashes(arr, len(tokens), chunk, start, end, out, cap)
    return [out.raw[32 * i:32 * i + 32] for i in range(n)]


# ---- a ROUTER that hands lmcache's requests to kvcd's codec -------------------

class Router:
    """A ROUTER on ipc://; each request's frames go to kvcd's decoder, and the
    reply spec the test queued for it is encoded by kvcd and sent back."""

    def __init__(self, name):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.url = "ipc://%s/%s.sock" % (TMPDIR, name)
        self.sock.bind(self.url)

    def serve_one(self, reply_spec):
        if not self.sock.poll(OP_TIMEOUT_S * 1000):
            raise AssertionError("no request arrived")
        frames = self.sock.recv_multipart()
        ident, body = frames[0], frames[1:]
        decoded = c_decode(body)
        payload = c_encode(reply_spec)
        self.sock.send_multipart([ident, body[0], body[1]] +
                                 ([] if payload is None else [payload]))
        return body, decoded, payload

    def close(self):
        self.sock.close(0)
        self.ctx.term()


def lmc_key(tokens, worker_id=None, world_size=2, salt="", start=0, end=None,
            request_id="req-1", model="org/model"):
    return IPCCacheServerKey(model_name=model, world_size=world_size, worker_id=worker_id,
                             token_ids=tuple(tokens), start=start,
                             end=len(tokens) if end is None else end,
                             request_id=request_id, cache_salt=salt, num_kv_readers=1)


class TestOpTable(unittest.TestCase):
    def test_every_rpc_known_with_its_arity_and_id(self):
        specs = get_rpc_specs()
        for name, spec in specs.items():
            wid, np_ = ctypes.c_int64(), ctypes.c_size_t()
            self.assertEqual(SHIM.kvcd_shim_op_info(name.encode(), ctypes.byref(wid),
                                                    ctypes.byref(np_)), 0, name)
            self.assertEqual(np_.value, len(spec.payload_types), name)
            self.assertEqual(wid.value, LEGACY_OPERATION_IDS.get(name, -1), name)
        i, names = 1, []
        while (n := SHIM.kvcd_shim_op_name(i)) is not None:
            names.append(n.decode())
            i += 1
        self.assertEqual(sorted(names), sorted(specs))


class TestRealMessages(unittest.TestCase):
    """lmcache's client sends; kvcd decodes and answers; lmcache's client reads."""

    @classmethod
    def setUpClass(cls):
        cls.router = Router("codec")
        cls.ctx = zmq.Context()
        cls.mq = MessageQueueClient(cls.router.url, cls.ctx)
        cls.client = ZmqMultiprocessClient(cls.mq)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.ctx.term()
        cls.router.close()

    def call(self, method, args, reply_spec, response_type=None):
        fut = getattr(self.client, method)(*args)
        body, dec, payload = self.router.serve_one(reply_spec)
        self.assertEqual(dec["rc"], 0, dec.get("msg"))
        self.assertEqual(dec["op"], method)
        result = fut.result(timeout=OP_TIMEOUT_S)
        spec = get_rpc_specs()[method]
        self.assertEqual(len(body), 2 + len(spec.payload_types))
        self.assertEqual(dec["wire_id"], LEGACY_OPERATION_IDS.get(method, -1))
        return dec, result, payload

    def check_key(self, got, key):
        self.assertEqual(got["model_name"], key.model_name)
        self.assertEqual(got["world_size"], key.world_size)
        self.assertEqual(got["worker_id"], key.worker_id)
        self.assertEqual(got["token_ids"], list(key.token_ids))
        self.assertEqual(got["start"], key.start)
        self.assertEqual(got["end"], key.end)
        self.assertEqual(got["request_id"], key.request_id)
        self.assertEqual(got["cache_salt"], key.cache_salt)
        self.assertEqual(got["num_kv_readers"], key.num_kv_readers)
        self.assertEqual(got["missing"], 0)

    def test_scheduler_side(self):
        toks = list(range(1, 600))
        key = lmc_key(toks, salt="tenant-a")
        dec, res, _ = self.call("lookup", (key, 2), {"kind": "none"})
        self.check_key(dec["key"], key)
        self.assertEqual(dec["tp_size"], 2)
        self.assertIsNone(res)
        dec, res, _ = self.call("query_prefetch_status", ("req-1",), {"kind": "int", "v": 3})
        self.assertEqual((dec["request_id"], res), ("req-1", 3))
        dec, res, _ = self.call("query_prefetch_status", ("req-1",), {"kind": "none"})
        self.assertIsNone(res)
        dec, res, _ = self.call("wait_prefetch_status", ("req-1", 2.5), {"kind": "int", "v": 2})
        self.assertEqual((dec["timeout"], res), (2.5, 2))
        dec, res, _ = self.call("free_lookup_locks", (key, 2), {"kind": "none"})
        self.check_key(dec["key"], key)
        dec, res, _ = self.call("end_session", ("req-1",), {"kind": "none"})
        self.assertEqual(dec["request_id"], "req-1")
        dec, res, _ = self.call("get_chunk_size", (), {"kind": "int", "v": 256})
        self.assertEqual(res, 256)
        dec, res, _ = self.call("ping", (None,), {"kind": "bool", "v": True})
        self.assertIsNone(dec["instance_id"])
        self.assertIs(res, True)
        dec, res, _ = self.call("noop", (), {"kind": "str", "v": "kvcd"})
        self.assertEqual(res, "kvcd")
        dec, res, _ = self.call("get_experimental", (), {"kind": "str_list", "v": ["a", "b"]})
        self.assertEqual(res, ["a", "b"])
        dec, res, _ = self.call("clear", (True,), {"kind": "none"})
        self.assertIs(dec["force"], True)
        dec, res, _ = self.call("clear", (), {"kind": "none"})  # the default is sent
        self.assertIs(dec["force"], False)
        recs = [BlockAllocationRecord(req_id="r", new_block_ids=[1, 2], new_token_ids=[3])]
        dec, res, _ = self.call("report_block_allocation", (77, "org/model", recs),
                                {"kind": "none"})
        self.assertEqual((dec["instance_id"], dec["model_name"]), (77, "org/model"))

    def test_worker_side_engine_driven(self):
        reg = RegisterEngineDrivenContextPayload(
            instance_id=os.getpid(), model_name="org/model", world_size=2, block_size=16,
            num_layers=4, hidden_dim_size=256, dtype_str="bfloat16", use_mla=True,
            num_physical_slots=256)
        dec, res, payload = self.call(
            "register_kv_cache_engine_driven_context", (reg,),
            {"kind": "register", "shm_name": "/kvcd-l1-test", "pool_size": 3 << 30})
        g = dec["reg"]
        for f in ("instance_id", "model_name", "world_size", "block_size", "num_layers",
                  "hidden_dim_size", "dtype_str", "use_mla", "num_physical_slots"):
            self.assertEqual(g[f], getattr(reg, f), f)
        self.assertEqual(g["missing"], 0)
        self.assertEqual(res, RegisterEngineDrivenContextResponse("/kvcd-l1-test", 3 << 30))
        self.assertEqual(payload, msgspec_encode(res, RegisterEngineDrivenContextResponse))

        key = lmc_key(list(range(512)), worker_id=1)
        slots = [{"offset": 4096 * i, "length": 4096, "shape": [4, 256, 256],
                  "dtype": "bfloat16"} for i in range(2)]
        dec, res, payload = self.call(
            "prepare_store", (key, 42),
            {"kind": "prepare_store", "slots": slots, "chunk_indices": [0, 1]})
        self.check_key(dec["key"], key)
        self.assertEqual(dec["instance_id"], 42)
        want = PrepareStoreResponse(context={"slots": slots, "chunk_indices": [0, 1]})
        self.assertEqual(res, want)
        self.assertEqual(payload, msgspec_encode(want, PrepareStoreResponse))
        dec, res, payload = self.call("prepare_store", (key, 42),
                                      {"kind": "prepare_store", "slots": [],
                                       "chunk_indices": []})
        self.assertEqual(res.context, {"slots": [], "chunk_indices": []})
        dec, res, _ = self.call("commit_store", (key, 42, b""), {"kind": "bool", "v": True})
        self.assertEqual(dec["data_len"], 0)
        self.assertIs(res, True)
        dec, res, _ = self.call("commit_store", (key, 42, b"\x01" * 300),
                                {"kind": "bool", "v": False})
        self.assertEqual(dec["data_len"], 300)
        self.assertIs(res, False)
        dec, res, payload = self.call("prepare_retrieve", (key, 42),
                                      {"kind": "prepare_retrieve", "success": True,
                                       "data": "", "slots": slots})
        want = PrepareRetrieveResponse(success=True, data=b"", context={"slots": slots})
        self.assertEqual(res, want)
        self.assertEqual(payload, msgspec_encode(want, PrepareRetrieveResponse))
        dec, res, _ = self.call("commit_retrieve", (key, 42), {"kind": "bool", "v": True})
        self.assertIs(res, True)
        dec, res, _ = self.call("ping", (42,), {"kind": "bool", "v": True})
        self.assertEqual(dec["instance_id"], 42)
        dec, res, _ = self.call("unregister_kv_cache_engine_driven_context", (42,),
                                {"kind": "none"})
        self.assertEqual(dec["instance_id"], 42)

    def test_refusals_are_accepted_typed_answers(self):
        """Whatever kvcd cannot serve it still answers, with a value of the
        declared type that lmcache's client decodes (no 300 s stall)."""
        key = lmc_key(list(range(64)), worker_id=0)
        cases = {
            "prepare_store": ((key, 1), PrepareStoreResponse(context={})),
            "prepare_retrieve": ((key, 1), PrepareRetrieveResponse(success=False)),
            "commit_store": ((key, 1, b""), False),
            "commit_retrieve": ((key, 1), False),
            "get_chunk_size": ((), 0),
            "query_prefetch_status": (("r",), 0),
            "store": ((key, 1, [[1, 2]], b"\x00" * 64), (b"", False)),
            "retrieve": ((key, 1, [[1, 2]], b"\x00" * 64, 0), (b"", False)),
            "get_experimental": ((), []),
            "lookup": ((key, 1), None),
        }
        for op, (args, want) in cases.items():
            dec, res, payload = self.call(op, args, {"kind": "refusal", "op": op})
            self.assertEqual(res, want, op)
            if payload is not None:
                self.assertEqual(payload, msgspec_encode(want, get_rpc_specs()[op].response_type),
                                 op)

    def test_every_operation_decodes(self):
        """One request of every rpc lmcache 0.5.6 defines, built by its client
        from defaults-like arguments, decodes with the right arity."""
        key = lmc_key(list(range(32)))
        sample = {
            int: 3, "int | None": None, str: "s", float: 0.5, bool: True, bytes: b"xy",
        }
        for name, spec in get_rpc_specs().items():
            if spec.streaming:
                continue  # subscribe_kv_events: a stream, checked by arity above
            args = []
            ok = True
            for t in spec.payload_types:
                if t is IPCCacheServerKey:
                    args.append(key)
                elif t in sample:
                    args.append(sample[t])
                elif str(t) == "int | None":
                    args.append(None)
                elif getattr(t, "__origin__", None) in (list, tuple):
                    args.append([])
                elif getattr(t, "__origin__", None) is dict:
                    args.append({})
                elif t is RegisterEngineDrivenContextPayload:
                    args.append(RegisterEngineDrivenContextPayload(
                        1, "m", 1, 16, 2, 64, "float16", False))
                else:
                    ok = False  # a struct of an optional module: skip
                    break
            if not ok:
                continue
            try:
                fut = getattr(self.client, name)(*args)
            except Exception:  # lmcache's own encoder refuses the sample
                continue
            if not self.router.sock.poll(2000):
                fut.cancel() if hasattr(fut, "cancel") else None
                continue  # lmcache could not encode these arguments
            frames = self.router.sock.recv_multipart()
            dec = c_decode(frames[1:])
            self.assertEqual(dec["rc"], 0, "%s: %s" % (name, dec.get("msg")))
            self.assertEqual(dec["op"], name)
            self.assertEqual(dec["nparams"], len(spec.payload_types))
            refusal = c_encode({"kind": "refusal", "op": name})
            self.router.sock.send_multipart([frames[0], frames[1], frames[2]] +
                                            ([] if refusal is None else [refusal]))
            fut.result(timeout=OP_TIMEOUT_S)  # decodes: a typed answer


class TestHasher(unittest.TestCase):
    def test_none_hash(self):
        out = ctypes.create_string_buffer(32)
        SHIM.kvcd_shim_none_hash(out)
        self.assertEqual(out.raw, TokenHasher(256, "blake3").none_hash)

    def test_chunk_hashes_equal_lmcache(self):
        rnd = random.Random(1234)
        for chunk in (1, 4, 16, 256):
            h = TokenHasher(chunk, "blake3")
            for _ in range(20):
                n = rnd.randrange(0, chunk * 6 + 3)
                toks = [rnd.randrange(0, 1 << 32) for _ in range(n)]
                self.assertEqual(c_chunk_hashes(toks, chunk), h.compute_chunk_hashes(toks))
                start = chunk * rnd.randrange(0, 4)
                end = chunk * rnd.randrange(0, 7)
                self.assertEqual(c_chunk_hashes(toks, chunk, start, end),
                                 h.compute_chunk_hashes(toks, start=start, end=end))

    def test_object_keys_match(self):
        """Hashes of a lookup key become the same ObjectKeys (kv_rank packing)."""
        h = TokenHasher(16, "blake3")
        key = lmc_key(list(range(100)), world_size=2)
        ours = c_chunk_hashes(list(key.token_ids), 16)
        rows = ipc_key_to_object_keys(key, ours, [0])[0]
        self.assertEqual(len(rows), 2 * len(ours))
        self.assertEqual({k.kv_rank for k in rows}, {0x02000200, 0x02010201})
        self.assertEqual([k.chunk_hash for k in rows[::2]], h.compute_chunk_hashes(
            list(key.token_ids)))

    def test_hash_algorithm_selection(self):
        msg = ctypes.create_string_buffer(512)
        self.assertEqual(SHIM.kvcd_shim_hash_select(b"blake3", msg, 512), 0)
        for name in (b"sha256_cbor", b"sha256_cbor_64bit", b"builtin", b"xxhash"):
            self.assertEqual(SHIM.kvcd_shim_hash_select(name, msg, 512), -1016, name)
            self.assertIn(b"--hash-algorithm", msg.value)
            self.assertIn(b"blake3", msg.value)


# ---- fs interoperability with the real daemon ---------------------------------

class Daemon:
    def __init__(self, name, adapter):
        self.endpoint = "ipc://%s/%s.sock" % (TMPDIR, name)
        self.log_path = os.path.join(TMPDIR, name + ".log")
        args = [BINARY, "--endpoint", self.endpoint, "--l1-size-gb", "0.25",
                "--log-level", "warning", "--l2-adapter", json.dumps(adapter)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        DAEMONS.append(self)
        deadline = time.monotonic() + 10
        with Client(self.endpoint, timeout_ms=250) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("kvcd exited %d:\n%s" % (self.proc.returncode,
                                                               self.log()))
                try:
                    c.ping()
                    return
                except KvcdTimeout:
                    pass
        raise RuntimeError("kvcd did not answer:\n" + self.log())

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")[-4000:]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


class Obj:
    """What FSL2Adapter reads from and writes into: an object with byte_array."""

    def __init__(self, b):
        self.byte_array = memoryview(b)


def wait_for(fn, what):
    deadline = time.monotonic() + OP_TIMEOUT_S
    while time.monotonic() < deadline:
        r = fn()
        if r:
            return r
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)


def lmc_store(adapter, keys, datas):
    adapter.submit_store_task(keys, [Obj(bytearray(d)) for d in datas])
    res = wait_for(adapter.pop_completed_store_tasks, "an LMCache store")
    assert all(int(r) >= 0 for r in res.values()), res  # L2StoreResult: -1 failed


def lmc_load(adapter, keys, sizes):
    t = adapter.submit_lookup_and_lock_task(keys, {})
    found = wait_for(lambda: adapter.query_lookup_and_lock_result(t), "an LMCache lookup")
    bufs = [bytearray(n) for n in sizes]
    t = adapter.submit_load_task(keys, [Obj(b) for b in bufs])
    loaded = wait_for(lambda: adapter.query_load_result(t), "an LMCache load")
    return found.get_indices_list(), loaded.get_indices_list(), [bytes(b) for b in bufs]


def chunk_keys(model, tokens, chunk, world_size, salt="", group=0):
    """The ObjectKeys an LMCache server stores a prompt's chunks under."""
    h = TokenHasher(chunk, "blake3")
    key = lmc_key(tokens, world_size=world_size, salt=salt, model=model)
    hashes = h.compute_chunk_hashes(list(tokens))
    return ipc_key_to_object_keys(key, hashes, [group])[0]


class TestFsInterop(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(dir=TMPDIR)

    def listing(self):
        return sorted((n, os.path.getsize(os.path.join(self.dir, n)))
                      for n in os.listdir(self.dir) if n.endswith(".data"))

    def test_lmcache_writes_kvcd_serves(self):
        rnd = random.Random(7)
        toks = [rnd.randrange(0, 150000) for _ in range(64)]
        plain = chunk_keys("Qwen/Qwen3-0.6B", toks, 16, 2)            # 4 chunks x 2 ranks
        salted = chunk_keys("Qwen/Qwen3-0.6B", toks, 16, 1, salt="tenant:7")
        keys = plain + salted
        datas = [rnd.randbytes(4096 + 64 * i) for i in range(len(keys))]
        a = FSL2Adapter(FSL2AdapterConfig.from_dict({"type": "fs", "base_path": self.dir}))
        try:
            lmc_store(a, keys, datas)
        finally:
            a.close()
        # LMCache's older 3-field name, raw, as earlier releases wrote it
        legacy_hash = bytes(range(32))
        legacy_data = rnd.randbytes(5000)
        with open(os.path.join(self.dir, "Qwen-SEP-Qwen3-0.6B@0x01000100@%s.data"
                               % legacy_hash.hex()), "wb") as f:
            f.write(legacy_data)
        for k in keys:
            self.assertTrue(os.path.exists(os.path.join(self.dir, _object_key_to_filename(k))))
        before = self.listing()

        d = Daemon("fs-read", {"type": "fs", "base_path": self.dir})
        try:
            with Client(d.endpoint, timeout_ms=OP_TIMEOUT_S * 1000) as c:
                for ks, ds in ((plain, datas[:len(plain)]), (salted, datas[len(plain):])):
                    for i, k in enumerate(ks):
                        prefix, present = c.lookup(k.model_name, [k.chunk_hash],
                                                   kv_rank=k.kv_rank, group=k.object_group_id,
                                                   salt=k.cache_salt)
                        self.assertEqual(prefix, 1, _object_key_to_filename(k))
                        got = c.load(k.model_name, [k.chunk_hash], kv_rank=k.kv_rank,
                                     group=k.object_group_id, salt=k.cache_salt)
                        self.assertEqual(bytes(got[0]), ds[i], _object_key_to_filename(k))
                prefix, _ = c.lookup("Qwen/Qwen3-0.6B", [legacy_hash], kv_rank=0x01000100)
                self.assertEqual(prefix, 1)  # LOOKUP brings L2 hits into L1 for LOAD
                got = c.load("Qwen/Qwen3-0.6B", [legacy_hash], kv_rank=0x01000100)
                self.assertEqual(bytes(got[0]), legacy_data)
                fs = [a for a in c.status()["l2"] if a.get("type") == "fs"][0]
        finally:
            self.assertEqual(d.stop(), 0)
        self.assertEqual(self.listing(), before)  # nothing deleted, nothing rewritten
        self.assertEqual(fs["checksum_failures"], 0)
        self.assertEqual(fs["counters"]["loads"], len(keys) + 1)
        self.assertEqual(fs["counters"]["removes"] + fs["counters"]["evictions"], 0)

    def test_kvcd_writes_lmcache_reads(self):
        rnd = random.Random(8)
        toks = [rnd.randrange(0, 150000) for _ in range(48)]
        keys = chunk_keys("meta-llama/Llama-3.1-8B", toks, 16, 2)
        keys += chunk_keys("meta-llama/Llama-3.1-8B", toks, 16, 1, salt="u1", group=1)
        datas = [rnd.randbytes(8192 + i) for i in range(len(keys))]
        d = Daemon("fs-write", {"type": "fs", "base_path": self.dir, "format": "lmcache"})
        try:
            with Client(d.endpoint, timeout_ms=OP_TIMEOUT_S * 1000) as c:
                for k, data in zip(keys, datas):
                    r = c.store(k.model_name, [k.chunk_hash], [data], kv_rank=k.kv_rank,
                                group=k.object_group_id, salt=k.cache_salt)
                    self.assertEqual(list(r), [0])
        finally:
            self.assertEqual(d.stop(), 0)  # a clean stop flushes write-behind to fs
        names = {n for n, _ in self.listing()}
        for k, data in zip(keys, datas):
            self.assertIn(_object_key_to_filename(k), names)
            self.assertEqual(os.path.getsize(os.path.join(self.dir, _object_key_to_filename(k))),
                             len(data))
        a = FSL2Adapter(FSL2AdapterConfig.from_dict({"type": "fs", "base_path": self.dir}))
        try:
            found, loaded, got = lmc_load(a, keys, [len(x) for x in datas])
        finally:
            a.close()
        self.assertEqual(found, list(range(len(keys))))
        self.assertEqual(loaded, list(range(len(keys))))
        self.assertEqual(got, datas)


# ---- runner -----------------------------------------------------------------

def cleanup():
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)
    if TMPDIR:
        shutil.rmtree(TMPDIR, ignore_errors=True)


def main():
    global BINARY, SHIM, TMPDIR
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    BINARY, shim = sys.argv[1], sys.argv[2]
    SHIM = load_shim(shim)
    TMPDIR = tempfile.mkdtemp(prefix="kvcd-lmc-")

    def watchdog():
        cleanup()
        print("watchdog: run exceeded %d s" % WATCHDOG_S, flush=True)
        os._exit(3)

    t = threading.Timer(WATCHDOG_S, watchdog)
    t.daemon = True
    t.start()
    try:
        prog = unittest.main(argv=[sys.argv[0]] + sys.argv[3:], exit=False, verbosity=2)
    finally:
        cleanup()
        t.cancel()
    r = prog.result
    failed = len(r.failures) + len(r.errors)
    print("%d passed, %d failed" % (r.testsRun - failed, failed), flush=True)
    return 0 if failed == 0 and r.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
