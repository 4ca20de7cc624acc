"""kvcd_sglang - an SGLang HiCache L3 storage backend backed by kvcd's shared L1.

For sglang 0.5.23. SGLang loads it at run time (docs/ENGINES.md)::

    python -m sglang.launch_server --model-path M --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "kvcd",
            "module_path": "kvcd_sglang", "class_name": "KvcdHiCacheStorage",
            "interface_v1": 1, "kvcd_endpoint": "ipc:///run/kvcd/kvcd.sock"}'

``interface_v1: 1`` makes SGLang use the zero-copy batch calls
(``batch_exists``, ``batch_get_v1``, ``batch_set_v1`` with host indices): each
page moves with one copy between SGLang's host pool and kvcd's L1, done here
(kvcd_zc.PageStore). The plain ``get``/``set``/``exists`` (and the deprecated
``batch_get``/``batch_set``) work on tensors and are there for SGLang's
generic path.

Keys: a page's kvcd key is SGLang's page hash (hex SHA-256 -> its 32 bytes),
under the key set ``model`` = the served model name (``kvcd_model`` in the
extra config overrides it), ``world_size``/``worker_id`` = tp_size/tp_rank
(MLA: 1/0, the KV is the same on every TP rank and only the storage writer
rank stores), and a ``salt`` naming everything else that changes the bytes of
a page: the layout, pipeline/context-parallel rank, DCP shard and
``kvcd_salt`` from the extra config. Engines share pages only where all of
these match (docs/ENGINES.md).

Never raises on kvcd trouble: a down or restarted kvcd gives misses and
failed sets (kvcd_zc).
"""

import os

from sglang.srt.mem_cache.hicache_storage import HiCacheStorage

from kvcd_zc import PageStore

__all__ = ["KvcdHiCacheStorage", "DEFAULT_ENDPOINT"]

DEFAULT_ENDPOINT = "ipc:///run/kvcd/kvcd.sock"


class KvcdHiCacheStorage(HiCacheStorage):
    """HiCacheStorage over kvcd. ``storage_config`` is SGLang's
    HiCacheStorageConfig; its ``extra_config`` may set ``kvcd_endpoint``
    (default $KVCD_ENDPOINT, else ipc:///run/kvcd/kvcd.sock),
    ``kvcd_timeout_ms`` (2000), ``kvcd_retry_ms`` (1000), ``kvcd_model``,
    ``kvcd_salt``."""

    def __init__(self, storage_config, kwargs=None):
        extra = dict(storage_config.extra_config or {})
        self.storage_config = storage_config
        endpoint = extra.get("kvcd_endpoint") or os.environ.get("KVCD_ENDPOINT",
                                                                DEFAULT_ENDPOINT)
        model = extra.get("kvcd_model") or storage_config.model_name
        if not model:
            raise ValueError("kvcd_sglang: no model name (set kvcd_model in "
                             "--hicache-storage-backend-extra-config)")
        self.is_mla = bool(storage_config.is_mla_model)
        self.is_writer = bool(getattr(storage_config, "is_storage_writer", True))
        if self.is_mla:
            world, rank = 1, 0
        else:
            world, rank = storage_config.tp_size, storage_config.tp_rank
        salt = ["sglang",
                "pf" if storage_config.is_page_first_layout else "lf",
                "pp%d.%d" % (storage_config.pp_rank, storage_config.pp_size)]
        if storage_config.attn_cp_size > 1:
            salt.append("cp%d.%d" % (storage_config.attn_cp_rank, storage_config.attn_cp_size))
        if getattr(storage_config, "dcp_size", 1) > 1:
            salt.append("dcp%d.%d.tp%d.pg%s" % (storage_config.dcp_rank, storage_config.dcp_size,
                                                storage_config.tp_size,
                                                storage_config.logical_page_size))
        if getattr(storage_config, "should_split_heads", False):
            salt.append("split%s" % storage_config.tp_lcm_size)
        if extra.get("kvcd_salt"):
            salt.append(str(extra["kvcd_salt"]))
        self.namespace = {"model": str(model), "world_size": int(world),
                          "worker_id": int(rank), "group": 0, "salt": "-".join(salt)}
        self.store = PageStore(endpoint, self.namespace,
                               timeout_ms=int(extra.get("kvcd_timeout_ms", 2000)),
                               retry_ms=int(extra.get("kvcd_retry_ms", 1000)))
        self.mem_pool_host = None

    # -- zero-copy batch interface (interface_v1) ------------------------------

    def _pages(self, n, host_indices):
        """Per page, the (address, size) fragments of the host pool."""
        pool = self.mem_pool_host
        ptrs, sizes = pool.get_page_buffer_meta(host_indices)
        if n == 0 or len(ptrs) % n:
            raise ValueError("kvcd_sglang: %d buffers for %d pages" % (len(ptrs), n))
        per = len(ptrs) // n
        return [list(zip(ptrs[i * per:(i + 1) * per], sizes[i * per:(i + 1) * per]))
                for i in range(n)]

    def _check(self, keys, host_indices):
        page = self.mem_pool_host.page_size
        return host_indices is not None and host_indices.numel() == len(keys) * page

    def batch_exists(self, keys, extra_info=None):
        return self.store.prefix(keys)

    def batch_get_v1(self, keys, host_indices, extra_info=None):
        if not keys:
            return []
        if not self._check(keys, host_indices):
            return [False] * len(keys)
        return self.store.get(keys, self._pages(len(keys), host_indices))

    def batch_set_v1(self, keys, host_indices, extra_info=None):
        if not keys:
            return []
        if not self._check(keys, host_indices):
            return [False] * len(keys)
        if self.is_mla and not self.is_writer:
            return [True] * len(keys)     # the writer rank stores the shared page
        return self.store.put(keys, self._pages(len(keys), host_indices))

    # -- plain interface (tensors) ---------------------------------------------

    @staticmethod
    def _frag(t):
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("kvcd_sglang: tensors must be contiguous CPU tensors")
        return [(t.data_ptr(), t.numel() * t.element_size())]

    def exists(self, key):
        return self.store.lookup([key])[0]

    def get(self, key, target_location=None, target_sizes=None):
        if target_location is None:
            raise ValueError("kvcd_sglang: get needs target_location (a CPU tensor "
                             "of the page's size)")
        return target_location if self.store.get([key], [self._frag(target_location)])[0] \
            else None

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        if target_locations is None:
            raise ValueError("kvcd_sglang: batch_get needs target_locations")
        ok = self.store.get(keys, [self._frag(t) for t in target_locations])
        return [t if good else None for t, good in zip(target_locations, ok)]

    def set(self, key, value=None, target_location=None, target_sizes=None):
        if value is None:
            return False
        value = value.contiguous()
        return self.store.put([key], [self._frag(value)])[0]

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None):
        if values is None:
            return False
        values = [v.contiguous() for v in values]
        return all(self.store.put(keys, [self._frag(v) for v in values]))

    def clear(self):
        """kvcd is shared by engines: clearing this backend removes nothing."""
        return False

    def get_stats(self):
        return None

    def close(self):
        self.store.close()

