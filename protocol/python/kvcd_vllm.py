"""kvcd_vllm - a secondary tier for vLLM's TieringOffloadingSpec backed by kvcd.

For vllm 0.33.0. vLLM loads it by class name and module path (docs/ENGINES.md)::

    vllm serve M --kv-transfer-config '{"kv_connector": "OffloadingConnector",
        "kv_role": "kv_both", "kv_connector_extra_config": {
            "spec_name": "TieringOffloadingSpec", "cpu_bytes_to_use": 8000000000,
            "secondary_tiers": [{"type": "KvcdSecondaryTier",
                "module_path": "kvcd_vllm",
                "endpoint": "ipc:///run/kvcd/kvcd.sock"}]}}'

The tier sits behind vLLM's CPU tier: ``submit_store`` copies chunks from the
CPU tier's memoryview into kvcd's L1 and ``submit_load`` copies them back,
one copy each way (kvcd_zc.PageStore), on a worker thread of this tier, so
every method the scheduler calls returns at once. Completions are reported by
``get_finished_jobs()``. ``lookup`` is answered from what this tier knows
(stored or looked up before); an unknown key is asked of kvcd in the
background and answered RETRY until the answer is there.

Keys: vLLM's OffloadKey (block hash + group index, 36 bytes) as is, under the
key set ``model`` = the model name (vLLM's block hashes do not include it),
``world_size``/``worker_id`` from the offloading config's parallel layout, and
a ``salt`` digesting what changes a chunk's bytes: tokens per hash, blocks
per chunk, dtype, chunk size, KV cache groups, canonical layout, plus the
tier's ``salt`` option.

Never raises on kvcd trouble: a down kvcd gives MISS and failed jobs.
"""

import hashlib
import json
import queue
import threading
import time
from typing import ClassVar

import numpy as np

from vllm.v1.kv_offload.base import LookupResult, Medium, RequestOffloadingContext
from vllm.v1.kv_offload.tiering.base import JobResult, SecondaryTierManager

from kvcd_zc import PageStore

__all__ = ["KvcdSecondaryTier", "namespace_of"]

DEFAULT_ENDPOINT = "ipc:///run/kvcd/kvcd.sock"
_KNOWN_MAX = 1 << 20       # lookup answers kept (a dict, dropped whole when full)


def namespace_of(config, block_size_bytes, salt=""):
    """kvcd's key-set fields for a vLLM OffloadingConfig."""
    par = config.parallel
    world = int(getattr(par, "tp_size", 1)) * int(getattr(par, "pp_size", 1)) * \
        int(getattr(par, "pcp_size", 1)) * int(getattr(par, "dcp_size", 1))
    fields = {
        "tokens_per_hash": config.cache.tokens_per_hash,
        "blocks_per_chunk": config.cache.blocks_per_chunk,
        "dtype": str(config.model.dtype),
        "chunk_bytes": int(block_size_bytes),
        "groups": [[g.tokens_per_block, list(getattr(g, "layer_names", ()))]
                   for g in config.groups],
        "canonical": bool(getattr(config, "canonical_layout", False)),
        "layout": getattr(config, "kv_cache_layout", None),
        "parallel": [getattr(par, n, 1) for n in ("tp_size", "pp_size", "pcp_size",
                                                    "dcp_size")],
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str)
                            .encode()).hexdigest()[:16]
    return {"model": str(config.model.name), "world_size": min(world, 255),
            "worker_id": int(getattr(par, "rank", 0)), "group": 0,
            "salt": "vllm-" + digest + ("-" + salt if salt else "")}


class KvcdSecondaryTier(SecondaryTierManager):
    """SecondaryTierManager over kvcd. Options (tier config keys):
    ``endpoint`` (ipc://, default ipc:///run/kvcd/kvcd.sock), ``timeout_ms``
    (2000), ``retry_ms`` (1000), ``model`` (default: the served model),
    ``salt`` (added to the namespace), ``locality`` (ignored here)."""

    medium: ClassVar[Medium] = Medium.CPU

    def __init__(self, offloading_spec, primary_kv_view, tier_type,
                 backpressure_detector=None, endpoint=DEFAULT_ENDPOINT,
                 timeout_ms=2000, retry_ms=1000, model=None, salt="", locality=None):
        super().__init__(offloading_spec=offloading_spec, primary_kv_view=primary_kv_view,
                         tier_type=tier_type, backpressure_detector=backpressure_detector)
        self.namespace = namespace_of(offloading_spec.config, self.block_size_bytes, salt)
        if model:
            self.namespace["model"] = str(model)
        self._base = np.frombuffer(primary_kv_view, dtype=np.uint8).ctypes.data
        self._size = primary_kv_view.nbytes
        self.store = PageStore(endpoint, self.namespace, timeout_ms=timeout_ms,
                               retry_ms=retry_ms)
        self._known = {}              # OffloadKey -> bool (present in kvcd)
        self._asking = set()          # keys with a lookup in the queue
        self._lock = threading.Lock()
        self._finished = []
        self._jobs = queue.Queue()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kvcd-tier", daemon=True)
        self._thread.start()

    # -- scheduler side (never blocks) ---------------------------------------

    def lookup(self, key, req_context):
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                return LookupResult.HIT if known else LookupResult.MISS
            if key not in self._asking:
                self._asking.add(key)
                self._jobs.put(("lookup", key))
        return LookupResult.RETRY

    def submit_store(self, job_metadata):
        self._jobs.put(("store", job_metadata))

    def submit_load(self, job_metadata):
        self._jobs.put(("load", job_metadata))

    def get_finished_jobs(self):
        with self._lock:
            done, self._finished = self._finished, []
        return done

    def has_pending_work(self):
        with self._lock:
            return bool(self._finished) or self._jobs.unfinished_tasks > 0

    def on_new_request(self, req_context):
        return RequestOffloadingContext()

    def on_request_finished(self, req_context):
        # Answers of MISS are per request: a later request asks kvcd again.
        with self._lock:
            for k in [k for k, v in self._known.items() if not v]:
                del self._known[k]

    def drain_jobs(self):
        self._jobs.join()

    def shutdown(self):
        self._stop = True
        self._jobs.put(None)
        self._thread.join(timeout=10)
        self.store.close()

    # -- worker thread -------------------------------------------------------

    def _fragments(self, chunk_ids):
        n = self.block_size_bytes
        out = []
        for cid in chunk_ids:
            off = int(cid) * n
            if off < 0 or off + n > self._size:
                raise ValueError("chunk id %d outside the CPU tier" % int(cid))
            out.append([(self._base + off, n)])
        return out

    def _run(self):
        while True:
            item = self._jobs.get()
            try:
                if item is None or self._stop:
                    return
                kind, arg = item
                if kind == "lookup":
                    self._do_lookup(arg)
                else:
                    self._do_job(kind, arg)
            finally:
                self._jobs.task_done()

    def _remember(self, keys, present):
        with self._lock:
            if len(self._known) > _KNOWN_MAX:
                self._known.clear()
            for k, p in zip(keys, present):
                self._known[k] = bool(p)
                self._asking.discard(k)

    def _do_lookup(self, first):
        keys = [first]
        while len(keys) < 256:       # batch the lookups queued behind it
            try:
                nxt = self._jobs.queue[0]
            except IndexError:
                break
            if nxt is None or nxt[0] != "lookup":
                break
            keys.append(self._jobs.get_nowait()[1])
            self._jobs.task_done()
        self._remember(keys, self.store.lookup(keys))

    def _do_job(self, kind, job):
        t0 = time.monotonic()
        keys = list(job.keys)
        try:
            frags = self._fragments(job.chunk_ids)
            if len(frags) != len(keys):
                raise ValueError("%d keys, %d chunk ids" % (len(keys), len(frags)))
            ok = (self.store.put if kind == "store" else self.store.get)(keys, frags)
        except (ValueError, TypeError):
            ok = [False] * len(keys)
        if kind == "store":
            self._remember([k for k, g in zip(keys, ok) if g], [True] * sum(ok))
        else:
            missing = [k for k, g in zip(keys, ok) if not g]
            self._remember(missing, [False] * len(missing))
        good = sum(ok)
        result = JobResult(job_id=job.job_id, success=bool(keys) and good == len(keys),
                           transfer_time=time.monotonic() - t0,
                           transfer_bytes=good * self.block_size_bytes)
        if kind == "load" and 0 < good < len(keys):
            result.successful_keys = [k for k, g in zip(keys, ok) if g]
        with self._lock:
            self._finished.append(result)
