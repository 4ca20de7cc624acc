"""Throughput of a batch of pages through the engine modules vs memcpy.

    BUILD/venv/bin/python tests/python/bench_engines.py KVCD_BINARY [PAGES [PAGE_KIB]]

Starts kvcd (L1 only) on a private ipc:// socket; for SGLang, batch_set_v1 and
batch_get_v1 of PAGES pages of PAGE_KIB KiB each (MHA page_first: K and V
fragments); for vLLM, one store and one load job of as many chunks. Each is
compared with the engine-side memcpy of the same bytes (torch copy_ between
two CPU tensors) in the same run. Prints GB/s, best of 5. A benchmark, not a
test: nothing is asserted about speed.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_engines as T  # noqa: E402
import torch  # noqa: E402


def best(fn, n=5):
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main():
    T.BINARY = sys.argv[1]
    pages = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    kib = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    T.TMPDIR = tempfile.mkdtemp(prefix="kvcd-bench-")
    d = T.Daemon("bench")
    try:
        # SGLang: page bytes = 2 * layers * page_size * heads * dim * 2
        heads, dim, page_size = 8, 128, 16
        layers = max(1, kib * 1024 // (2 * page_size * heads * dim * 2))
        src = T.HostPool(pages, page_size, layers, heads, dim, seed=1)
        dst = T.HostPool(pages, page_size, layers, heads, dim, seed=2)
        nbytes = src.kv_buffer.numel() * 2
        b = T.sg_backend(d.endpoint, src)
        r = T.sg_backend(d.endpoint, dst)
        idx = src.indices(range(pages))
        cnt = [0]

        def sg_set():
            cnt[0] += 1
            keys = T.page_keys(pages, "b%d" % cnt[0])
            assert all(b.batch_set_v1(keys, idx))
            last[0] = keys
        last = [None]
        t_set = best(sg_set)
        t_get = best(lambda: all(r.batch_get_v1(last[0], dst.indices(range(pages)))) or
                     sys.exit("get missed"))
        t_cpy = best(lambda: dst.kv_buffer.copy_(src.kv_buffer))
        print("sglang: %d pages x %d KiB (%.0f MiB): batch_set_v1 %.2f GB/s, "
              "batch_get_v1 %.2f GB/s, memcpy %.2f GB/s" % (
                  pages, nbytes // pages // 1024, nbytes / 2**20, nbytes / t_set / 1e9,
                  nbytes / t_get / 1e9, nbytes / t_cpy / 1e9))
        b.close(), r.close()
        d.proc.send_signal(15), d.proc.wait(30)
        d = T.Daemon("bench2")
        # vLLM: chunks of kib KiB
        ps, pd = T.Primary(pages, kib << 10, seed=3), T.Primary(pages, kib << 10, seed=4)
        a, c = T.vl_tier(d.endpoint, ps), T.vl_tier(d.endpoint, pd)
        ids = list(range(pages))

        def vl_store():
            cnt[0] += 1
            keys = T.okeys(pages, "v%d" % cnt[0])
            a.submit_store(T.job(keys, ids))
            assert T.finish(a)[0].success
            last[0] = keys
        t_st = best(vl_store)

        def vl_load():
            c.submit_load(T.job(last[0], ids))
            assert T.finish(c)[0].success
        t_ld = best(vl_load)
        t_cp = best(lambda: pd.t.copy_(ps.t))
        n = pages * (kib << 10)
        print("vllm: %d chunks x %d KiB (%.0f MiB): store job %.2f GB/s, load job %.2f GB/s, "
              "memcpy %.2f GB/s" % (pages, kib, n / 2**20, n / t_st / 1e9, n / t_ld / 1e9,
                                    n / t_cp / 1e9))
        assert pd.t.equal(ps.t)
        a.shutdown(), c.shutdown()
    finally:
        T.cleanup()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
