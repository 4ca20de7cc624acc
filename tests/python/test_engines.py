"""The engine modules (kvcd_sglang, kvcd_vllm) against the real kvcd daemon.

    BUILD/venv/bin/python tests/python/test_engines.py KVCD_BINARY [unittest args]

Runs in the virtual environment of scripts/test-venv.sh: sglang==0.5.23 and
vllm==0.33.0 installed --no-deps with what importing their storage/tier
interfaces needs, torch 2.13.0 CPU. The modules are built on the engines' own
classes: KvcdHiCacheStorage subclasses sglang's HiCacheStorage and is created
by sglang's StorageBackendFactory ("dynamic"); KvcdSecondaryTier subclasses
vllm's SecondaryTierManager and is created by vllm's SecondaryTierFactory
(out-of-tree "module_path"), driven with vllm's TransferJob and ReqContext.

Stand-ins (what the engines' own objects would be, not importable on CPU):
- SGLang's host pools (sglang.srt.mem_cache.pool_host) import transformers
  and the model configs; HostPool here is a CPU tensor with the same
  get_page_buffer_meta() pointer layout as MHATokenToKVPoolHost (page_first:
  K and V per page; layer_first: K and V per layer per page) and
  MLATokenToKVPoolHost (page_first: one buffer per page).
- vLLM's OffloadingSpec needs a VllmConfig; the tier reads spec.config only
  (model, parallel, cache, groups), given here as a namespace.

Each test starts kvcd on a private ipc:// socket. Last line: "N passed, N failed".
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import unittest

import logging
logging.disable(logging.WARNING)

import torch  # noqa: E402

from sglang.srt.mem_cache.hicache_storage import (  # noqa: E402
    HiCacheStorage, HiCacheStorageConfig)
from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory  # noqa: E402
from vllm.v1.kv_offload.base import LookupResult, ReqContext, make_offload_key  # noqa: E402
from vllm.v1.kv_offload.tiering.base import SecondaryTierManager, TransferJob  # noqa: E402
from vllm.v1.kv_offload.tiering.factory import SecondaryTierFactory  # noqa: E402
import numpy as np  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(SRC, "protocol", "python"))
from kvcd_client import Client, KvcdTimeout  # noqa: E402
import kvcd_sglang  # noqa: E402
import kvcd_vllm  # noqa: E402

WATCHDOG_S = 600
BINARY = None
TMPDIR = None
DAEMONS = []


class Daemon:
    def __init__(self, name, fs_dir=None):
        self.endpoint = "ipc://%s/%s.sock" % (TMPDIR, name)
        self.log_path = os.path.join(TMPDIR, name + ".log")
        args = [BINARY, "--endpoint", self.endpoint, "--l1-size-gb", "0.25",
                "--log-level", "warning"]
        if fs_dir:
            args += ["--l2-adapter", json.dumps({"type": "fs", "base_path": fs_dir}),
                     "--l2-save-l1-on-stop"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        DAEMONS.append(self)
        deadline = time.monotonic() + 10
        with Client(self.endpoint, timeout_ms=250) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("kvcd exited %d" % self.proc.returncode)
                try:
                    c.ping()
                    return
                except KvcdTimeout:
                    pass
        raise RuntimeError("kvcd did not answer")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def status(self):
        with Client(self.endpoint, timeout_ms=2000) as c:
            return c.status()


# ---- SGLang ------------------------------------------------------------------

class HostPool:
    """Stand-in for SGLang's host KV pools: the pointer layout of their
    get_page_buffer_meta(); a CPU tensor of random bytes."""

    def __init__(self, pages, page_size=4, layers=3, heads=2, dim=16, mla=False,
                 layout="page_first", seed=0):
        self.page_size, self.layer_num, self.layout, self.mla = page_size, layers, layout, mla
        self.size = pages * page_size
        self.head_num, self.head_dim, self.dtype = heads, dim, torch.bfloat16
        g = torch.Generator().manual_seed(seed)
        if mla:        # MLATokenToKVPoolHost page_first: (size, layers, 1, kv_cache_dim)
            shape = (self.size, layers, 1, dim)
        elif layout == "page_first":   # MHA: (2, size, layers, heads, dim)
            shape = (2, self.size, layers, heads, dim)
        else:                          # MHA layer_first: (2, layers, size, heads, dim)
            shape = (2, layers, self.size, heads, dim)
        self.kv_buffer = torch.randint(-32768, 32767, shape, dtype=torch.int16,
                                       generator=g).view(torch.bfloat16)

    def get_page_buffer_meta(self, indices):
        assert len(indices) % self.page_size == 0
        base, it = self.kv_buffer.data_ptr(), self.dtype.itemsize
        ptrs, sizes = [], []
        idx = indices.tolist()
        tok = self.head_num * self.head_dim * it
        for i in range(0, len(idx), self.page_size):
            if self.mla:
                ptrs.append(base + idx[i] * self.layer_num * self.head_dim * it)
                sizes.append(self.layer_num * it * self.page_size * self.head_dim)
            elif self.layout == "page_first":
                k = base + idx[i] * self.layer_num * tok
                ptrs += [k, k + self.layer_num * self.size * tok]
                sizes += [self.layer_num * self.page_size * tok] * 2
            else:
                for layer in range(self.layer_num):
                    k = base + idx[i] * tok + layer * self.size * tok
                    ptrs += [k, k + self.layer_num * self.size * tok]
                    sizes += [self.page_size * tok] * 2
        return ptrs, sizes

    def indices(self, pages):
        return torch.tensor([p * self.page_size + t for p in pages
                             for t in range(self.page_size)], dtype=torch.int64)

    def page_bytes(self, page):
        ptrs, sizes = self.get_page_buffer_meta(self.indices([page]))
        return b"".join(_read(p, n) for p, n in zip(ptrs, sizes))


def _read(addr, n):
    import ctypes
    return ctypes.string_at(addr, n)


def sg_config(endpoint, tp_rank=0, tp_size=1, mla=False, model="org/model-a",
              page_first=True, **extra):
    cfg = {"backend_name": "kvcd", "module_path": "kvcd_sglang",
           "class_name": "KvcdHiCacheStorage", "interface_v1": 1,
           "kvcd_endpoint": endpoint, "kvcd_timeout_ms": 1000, "kvcd_retry_ms": 200}
    cfg.update(extra)
    return HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0,
        attn_cp_size=1, is_mla_model=mla, enable_storage_metrics=False,
        is_page_first_layout=page_first, model_name=model, extra_config=cfg)


def sg_backend(endpoint, pool, **kw):
    """Made as SGLang makes it: StorageBackendFactory, backend "dynamic"."""
    b = StorageBackendFactory.create_backend("dynamic", sg_config(endpoint, **kw), pool)
    b.register_mem_pool_host(pool)
    return b


def page_keys(n, tag="p"):
    import hashlib
    return [hashlib.sha256(("%s-%d" % (tag, i)).encode()).hexdigest() for i in range(n)]


class SGLangTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon("sg-%s" % self._testMethodName)
        self.closers = []

    def tearDown(self):
        for c in self.closers:
            c.close()
        self.d.stop()

    def backend(self, pool, **kw):
        b = sg_backend(self.d.endpoint, pool, **kw)
        self.closers.append(b)
        return b

    def test_real_base_class_and_factory(self):
        pool = HostPool(4)
        b = self.backend(pool)
        self.assertIsInstance(b, HiCacheStorage)
        self.assertIsInstance(b, kvcd_sglang.KvcdHiCacheStorage)
        self.assertEqual(b.namespace["model"], "org/model-a")

    def round_trip(self, **poolkw):
        src, dst = HostPool(16, seed=1, **poolkw), HostPool(16, seed=2, **poolkw)
        mla = poolkw.get("mla", False)
        w, r = self.backend(src, mla=mla), self.backend(dst, mla=mla)
        keys = page_keys(8)
        self.assertEqual(w.batch_set_v1(keys, src.indices(range(8))), [True] * 8)
        self.assertEqual(r.batch_exists(keys), 8)
        where = [15, 3, 9, 0, 12, 7, 1, 10]
        self.assertEqual(r.batch_get_v1(keys, dst.indices(where)), [True] * 8)
        for i, p in enumerate(where):
            self.assertEqual(dst.page_bytes(p), src.page_bytes(i), "page %d" % i)
        # storing again: already there, still True
        self.assertEqual(w.batch_set_v1(keys[:2], src.indices([0, 1])), [True, True])

    def test_round_trip_mha_page_first(self):
        self.round_trip()

    def test_round_trip_mha_layer_first(self):
        self.round_trip(layout="layer_first")

    def test_round_trip_mla(self):
        self.round_trip(mla=True)

    def test_prefix_misses_partial_batches(self):
        src, dst = HostPool(16, seed=3), HostPool(16, seed=4)
        w, r = self.backend(src), self.backend(dst)
        keys = page_keys(6, "x")
        stored = [0, 1, 2, 4]
        self.assertEqual(w.batch_set_v1([keys[i] for i in stored], src.indices(stored)),
                         [True] * 4)
        self.assertEqual(r.batch_exists(keys), 3)       # prefix stops at the gap
        self.assertEqual(r.batch_exists(keys[3:]), 0)
        self.assertEqual(r.batch_exists(page_keys(3, "never")), 0)
        before = dst.page_bytes(5)
        got = r.batch_get_v1(keys, dst.indices([10, 11, 12, 5, 13, 14]))
        self.assertEqual(got, [True, True, True, False, True, False])
        self.assertEqual(dst.page_bytes(5), before)     # a miss writes nothing
        self.assertEqual(dst.page_bytes(13), src.page_bytes(4))
        # a mismatched index count is refused per key, not raised
        self.assertEqual(r.batch_get_v1(keys[:2], dst.indices([1])), [False, False])
        self.assertEqual(r.batch_get_v1([], dst.indices([])), [])

    def test_batches_above_max_keys(self):
        d2 = Daemon("sg-maxkeys")
        try:
            pool, out = HostPool(300, page_size=1, seed=5), HostPool(300, page_size=1, seed=6)
            w, r = sg_backend(d2.endpoint, pool), sg_backend(d2.endpoint, out)
            keys = page_keys(300, "big")
            self.assertEqual(sum(w.batch_set_v1(keys, pool.indices(range(300)))), 300)
            self.assertEqual(r.batch_exists(keys), 300)
            self.assertEqual(sum(r.batch_get_v1(keys, out.indices(range(300)))), 300)
            self.assertEqual(out.kv_buffer.view(torch.int16).sum(),
                             pool.kv_buffer.view(torch.int16).sum())
            w.close(), r.close()
        finally:
            d2.stop()

    def test_namespacing_model_and_tp(self):
        p0, p1 = HostPool(4, seed=7), HostPool(4, seed=8)
        keys = page_keys(2, "ns")
        r0 = self.backend(p0, tp_rank=0, tp_size=2)
        r1 = self.backend(p1, tp_rank=1, tp_size=2)
        self.assertEqual(r0.batch_set_v1(keys, p0.indices([0, 1])), [True, True])
        self.assertEqual(r1.batch_exists(keys), 0)      # rank 1 has its own shard
        self.assertEqual(r1.batch_set_v1(keys, p1.indices([0, 1])), [True, True])
        other = self.backend(HostPool(4), tp_rank=0, tp_size=2, model="org/model-b")
        self.assertEqual(other.batch_exists(keys), 0)   # another model
        out = HostPool(4, seed=9)
        rr = self.backend(out, tp_rank=1, tp_size=2)
        self.assertEqual(rr.batch_get_v1(keys, out.indices([2, 3])), [True, True])
        self.assertEqual(out.page_bytes(2), p1.page_bytes(0))
        self.assertNotEqual(out.page_bytes(2), p0.page_bytes(0))

    def test_mla_shared_across_tp_one_writer(self):
        p0, p1 = HostPool(4, mla=True, seed=10), HostPool(4, mla=True, seed=11)
        keys = page_keys(2, "mla")
        w1 = self.backend(p1, tp_rank=1, tp_size=2, mla=True)
        self.assertEqual(w1.batch_set_v1(keys, p1.indices([0, 1])), [True, True])
        self.assertEqual(w1.batch_exists(keys), 0)      # rank 1 is not the writer
        w0 = self.backend(p0, tp_rank=0, tp_size=2, mla=True)
        self.assertEqual(w0.batch_set_v1(keys, p0.indices([0, 1])), [True, True])
        self.assertEqual(w1.batch_exists(keys), 2)      # rank 1 reads rank 0's pages
        self.assertEqual(w1.batch_get_v1(keys, p1.indices([2, 3])), [True, True])
        self.assertEqual(p1.page_bytes(3), p0.page_bytes(1))

    def test_plain_get_set_exists(self):
        b = self.backend(HostPool(2))
        key = page_keys(1, "plain")[0]
        value = torch.arange(1024, dtype=torch.float32)
        self.assertFalse(b.exists(key))
        self.assertIsNone(b.get(key, torch.empty(1024, dtype=torch.float32)))
        self.assertTrue(b.set(key, value))
        self.assertTrue(b.exists(key))
        out = torch.empty(1024, dtype=torch.float32)
        self.assertIs(b.get(key, out), out)
        self.assertTrue(torch.equal(out, value))
        self.assertIsNone(b.get(key, torch.empty(10, dtype=torch.float32)))  # size differs
        keys = page_keys(3, "plainb")
        vals = [torch.full((256,), float(i)) for i in range(3)]
        self.assertTrue(b.batch_set(keys, vals))
        got = b.batch_get(keys + ["00" * 32], [torch.empty(256) for _ in range(4)])
        self.assertTrue(all(torch.equal(g, v) for g, v in zip(got[:3], vals)))
        self.assertIsNone(got[3])
        self.assertEqual(b.batch_exists(keys), 3)

    def test_restart_with_fs_tier(self):
        fs = os.path.join(TMPDIR, "sg-fs")
        os.makedirs(fs, exist_ok=True)
        d = Daemon("sg-fs1", fs)
        src = HostPool(8, seed=12)
        w = sg_backend(d.endpoint, src)
        keys = page_keys(5, "fs")
        self.assertEqual(w.batch_set_v1(keys, src.indices(range(5))), [True] * 5)
        self.assertEqual(d.stop(), 0)
        self.assertEqual(w.batch_exists(keys), 0)       # down: misses
        d2 = Daemon("sg-fs1", fs)                       # same socket, new L1
        try:
            deadline = time.monotonic() + 10
            while w.batch_exists(keys) != 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            self.assertEqual(w.batch_exists(keys), 5)
            dst = HostPool(8, seed=13)
            r = sg_backend(d2.endpoint, dst)
            self.assertEqual(r.batch_get_v1(keys, dst.indices([7, 6, 5, 4, 3])), [True] * 5)
            for i, p in enumerate([7, 6, 5, 4, 3]):
                self.assertEqual(dst.page_bytes(p), src.page_bytes(i))
            # the writer's own connection follows the restart too
            more = page_keys(2, "fs-after")
            self.assertEqual(w.batch_set_v1(more, src.indices([5, 6])), [True, True])
            self.assertEqual(r.batch_get_v1(more, dst.indices([0, 1])), [True, True])
            self.assertEqual(dst.page_bytes(1), src.page_bytes(6))
            w.close(), r.close()
        finally:
            d2.stop()

    def test_kvcd_down(self):
        endpoint = "ipc://%s/nobody.sock" % TMPDIR
        pool = HostPool(4)
        b = sg_backend(endpoint, pool)
        keys = page_keys(2, "down")
        t0 = time.monotonic()
        self.assertEqual(b.batch_exists(keys), 0)
        self.assertEqual(b.batch_set_v1(keys, pool.indices([0, 1])), [False, False])
        self.assertEqual(b.batch_get_v1(keys, pool.indices([0, 1])), [False, False])
        self.assertFalse(b.exists(keys[0]))
        self.assertIsNone(b.get(keys[0], torch.empty(4)))
        self.assertFalse(b.set(keys[0], torch.empty(4)))
        self.assertLess(time.monotonic() - t0, 5.0)     # one timeout, then fast fails
        b.close()

    def test_bad_config(self):
        with self.assertRaisesRegex(ValueError, "ipc://"):
            sg_backend("tcp://127.0.0.1:1", HostPool(1))
        with self.assertRaisesRegex(ValueError, "kvcd_model"):
            sg_backend(self.d.endpoint, HostPool(1), model=None)


# ---- vLLM --------------------------------------------------------------------

def vl_spec(model="org/model-a", rank=0, tp=1, dtype="bfloat16"):
    ns = types.SimpleNamespace
    return ns(config=ns(
        model=ns(name=model, dtype=dtype),
        parallel=ns(tp_size=tp, pp_size=1, pcp_size=1, dcp_size=1, rank=rank),
        cache=ns(tokens_per_hash=16, blocks_per_chunk=1),
        groups=(ns(tokens_per_block=16, layer_names=("l0", "l1")),),
        canonical_layout=False, kv_cache_layout=None))


class Primary:
    """vLLM's CPU tier: chunks x chunk_bytes, as a 2-D memoryview."""

    def __init__(self, chunks=16, chunk_bytes=64 << 10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.t = torch.randint(0, 256, (chunks, chunk_bytes), dtype=torch.uint8, generator=g)
        self.view = memoryview(self.t.numpy())

    def chunk(self, i):
        return bytes(self.t[i].numpy())


def vl_tier(endpoint, primary, spec=None, **opts):
    cfg = {"type": "KvcdSecondaryTier", "module_path": "kvcd_vllm", "endpoint": endpoint,
           "timeout_ms": 1000, "retry_ms": 200}
    cfg.update(opts)
    return SecondaryTierFactory.create_secondary_tier(cfg, primary.view, spec or vl_spec())


def okeys(n, tag="b"):
    import hashlib
    return [make_offload_key(hashlib.sha256(("%s%d" % (tag, i)).encode()).digest(), 0)
            for i in range(n)]


_JOB = [0]


def job(keys, chunk_ids):
    _JOB[0] += 1
    return TransferJob(job_id=_JOB[0], keys=keys, chunk_ids=np.array(chunk_ids),
                       is_promotion=False, req_context=ReqContext(req_id="r"))


def finish(tier, n=1, timeout=10):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += list(tier.get_finished_jobs())
        time.sleep(0.005)
    return out


def settle(tier, key, ctx, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = tier.lookup(key, ctx)
        if r != LookupResult.RETRY:
            return r
        time.sleep(0.005)
    return LookupResult.RETRY


class VLLMTest(unittest.TestCase):
    def setUp(self):
        self.d = Daemon("vl-%s" % self._testMethodName)
        self.tiers = []
        self.ctx = ReqContext(req_id="req-1")

    def tearDown(self):
        for t in self.tiers:
            t.shutdown()
        self.d.stop()

    def tier(self, primary, **kw):
        t = vl_tier(self.d.endpoint, primary, **kw)
        self.tiers.append(t)
        return t

    def test_real_base_class(self):
        t = self.tier(Primary(2))
        self.assertIsInstance(t, SecondaryTierManager)
        self.assertEqual(t.block_size_bytes, 64 << 10)
        self.assertEqual(t.namespace["model"], "org/model-a")

    def test_store_lookup_load_round_trip(self):
        src, dst = Primary(8, seed=1), Primary(8, seed=2)
        a, b = self.tier(src), self.tier(dst)
        keys = okeys(4)
        t0 = time.monotonic()
        a.submit_store(job(keys, [0, 1, 2, 3]))
        self.assertLess(time.monotonic() - t0, 0.5)     # returns before the copy
        res = finish(a)
        self.assertEqual(len(res), 1)
        self.assertTrue(res[0].success)
        self.assertEqual(res[0].transfer_bytes, 4 * (64 << 10))
        self.assertEqual(a.lookup(keys[0], self.ctx), LookupResult.HIT)  # known: stored
        self.assertEqual(b.lookup(keys[2], self.ctx), LookupResult.RETRY)  # asks kvcd
        self.assertEqual(settle(b, keys[2], self.ctx), LookupResult.HIT)
        b.submit_load(job(keys, [7, 5, 3, 1]))
        res = finish(b)
        self.assertTrue(res[0].success, res)
        for i, c in enumerate([7, 5, 3, 1]):
            self.assertEqual(dst.chunk(c), src.chunk(i))
        b.drain_jobs()
        self.assertFalse(b.has_pending_work())

    def test_misses_and_partial_load(self):
        src, dst = Primary(8, seed=3), Primary(8, seed=4)
        a, b = self.tier(src), self.tier(dst)
        keys = okeys(4, "p")
        a.submit_store(job([keys[0], keys[2]], [0, 2]))
        self.assertTrue(finish(a)[0].success)
        self.assertEqual(settle(b, keys[1], self.ctx), LookupResult.MISS)
        self.assertEqual(settle(b, keys[2], self.ctx), LookupResult.HIT)
        before = dst.chunk(5)
        b.submit_load(job(keys[:3], [4, 5, 6]))
        res = finish(b)[0]
        self.assertFalse(res.success)
        self.assertEqual(set(res.successful_keys), {keys[0], keys[2]})
        self.assertEqual(dst.chunk(4), src.chunk(0))
        self.assertEqual(dst.chunk(6), src.chunk(2))
        self.assertEqual(dst.chunk(5), before)
        b.submit_load(job([keys[3]], [7]))
        res = finish(b)[0]
        self.assertFalse(res.success)
        self.assertIsNone(res.successful_keys)

    def test_model_namespacing(self):
        src = Primary(2, seed=5)
        a = self.tier(src)
        keys = okeys(1, "m")
        a.submit_store(job(keys, [0]))
        self.assertTrue(finish(a)[0].success)
        other = self.tier(Primary(2), spec=vl_spec(model="org/model-b"))
        self.assertEqual(settle(other, keys[0], self.ctx), LookupResult.MISS)
        same = self.tier(Primary(2))
        self.assertEqual(settle(same, keys[0], self.ctx), LookupResult.HIT)
        other_dtype = self.tier(Primary(2), spec=vl_spec(dtype="float16"))
        self.assertEqual(settle(other_dtype, keys[0], self.ctx), LookupResult.MISS)

    def test_restart_with_fs_tier(self):
        fs = os.path.join(TMPDIR, "vl-fs")
        os.makedirs(fs, exist_ok=True)
        d = Daemon("vl-fs1", fs)
        src = Primary(4, seed=6)
        a = vl_tier(d.endpoint, src)
        keys = okeys(3, "fs")
        a.submit_store(job(keys, [0, 1, 2]))
        self.assertTrue(finish(a)[0].success)
        self.assertEqual(d.stop(), 0)
        d2 = Daemon("vl-fs1", fs)
        try:
            dst = Primary(4, seed=7)
            b = vl_tier(d2.endpoint, dst)
            self.assertEqual(settle(b, keys[1], self.ctx), LookupResult.HIT)
            b.submit_load(job(keys, [3, 2, 1]))
            self.assertTrue(finish(b)[0].success)
            for i, c in enumerate([3, 2, 1]):
                self.assertEqual(dst.chunk(c), src.chunk(i))
            # the storing tier's connection follows the restart: it loads too
            a.submit_load(job(keys[:1], [3]))
            res = finish(a)
            self.assertTrue(res[0].success)
            self.assertEqual(src.chunk(3), src.chunk(0))
            a.shutdown(), b.shutdown()
        finally:
            d2.stop()

    def test_kvcd_down(self):
        src = Primary(2)
        t = vl_tier("ipc://%s/nobody-vl.sock" % TMPDIR, src)
        self.tiers.append(t)
        keys = okeys(2, "down")
        t0 = time.monotonic()
        self.assertEqual(t.lookup(keys[0], self.ctx), LookupResult.RETRY)
        self.assertLess(time.monotonic() - t0, 0.5)     # never blocks the scheduler
        self.assertEqual(settle(t, keys[0], self.ctx), LookupResult.MISS)
        t.submit_store(job(keys, [0, 1]))
        t.submit_load(job(keys, [0, 1]))
        res = finish(t, 2)
        self.assertEqual([r.success for r in res], [False, False])
        t.drain_jobs()


# ---- runner -----------------------------------------------------------------

def cleanup():
    for d in DAEMONS:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(5)
    if TMPDIR:
        shutil.rmtree(TMPDIR, ignore_errors=True)


def main():
    global BINARY, TMPDIR
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    BINARY = sys.argv[1]
    TMPDIR = tempfile.mkdtemp(prefix="kvcd-eng-")

    def watchdog():
        cleanup()
        print("watchdog: run exceeded %d s" % WATCHDOG_S, flush=True)
        os._exit(3)

    t = threading.Timer(WATCHDOG_S, watchdog)
    t.daemon = True
    t.start()
    try:
        prog = unittest.main(argv=[sys.argv[0]] + sys.argv[2:], exit=False, verbosity=2)
    finally:
        cleanup()
        t.cancel()
    r = prog.result
    failed = len(r.failures) + len(r.errors)
    print("%d passed, %d failed" % (r.testsRun - failed, failed), flush=True)
    return 0 if failed == 0 and r.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
