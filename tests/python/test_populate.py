"""Pre-faulting: Pin.tensors(populate=True) and safe_open's get_tensor() map the pages of what
they return in one madvise(MADV_POPULATE_READ); without populate a view maps nothing until it
is read. Checked with the Rss of the view's mapping in /proc/self/smaps."""

import os

import weightd
from weightd import safe as wsafe


def _rss_of(addr):
    """Rss in bytes of the mapping of this process that holds address @addr."""
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                found = lo <= addr < hi
            elif found and line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds %#x" % addr)


def _addr(a):
    return a.__array_interface__["data"][0]


def test_tensors_populate(loaded_daemon):
    with loaded_daemon.client() as c:
        with c.load("llama-tiny") as pin:
            lazy = pin.tensors()
            big = max(lazy, key=lambda k: lazy[k].nbytes)
            assert _rss_of(_addr(lazy[big])) < lazy[big].nbytes, "mapped before any read"
            del lazy
            eager = pin.tensors(populate=True)
            total = sum(a.nbytes for a in eager.values())
            assert _rss_of(_addr(eager[big])) >= total, (big, total)
            del eager


def test_get_tensor_populates(loaded_daemon):
    path = os.path.join(loaded_daemon.models, "llama-tiny", "model-00001-of-00002.safetensors")
    with weightd.safe_open(path, framework="np", socket=loaded_daemon.socket) as f:
        assert f.source == "daemon", f.fallback_reason
        name = max(f.keys(), key=lambda k: f.get_slice(k).get_shape()[0] *
                   (f.get_slice(k).get_shape() or [1])[-1])
        a = f.get_tensor(name)
        assert a.nbytes >= 65536
        assert _rss_of(_addr(a)) >= a.nbytes - 4096, (name, a.nbytes, _rss_of(_addr(a)))
        del a
    wsafe._drop_client(loaded_daemon.socket)
