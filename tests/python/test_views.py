"""Zero-copy views of the shared host cache: bytes, dtypes, the pin/view lifetime rules, and
one copy shared by many processes. These need the daemon's host-tier loader and
weightd_tensor_data(); they skip with the reason while either is missing."""

import gc
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import weightd
from weightd.stfile import STFile

from conftest import BUILD, ROOT, wait_for


def model_files(d):
    """(model, component or None, path) of every single-file component the daemon has."""
    out = [("vae-tiny", None, os.path.join(d.models, "vae-tiny.safetensors"))]
    for comp in ("unet", "vae", "text_encoder"):
        folder = os.path.join(d.models, "sd-tiny", comp)
        f = [n for n in os.listdir(folder) if n.endswith(".safetensors")][0]
        out.append(("sd-tiny", comp, os.path.join(folder, f)))
    for name in ("all_dtypes", "scalars_and_empty"):
        p = os.path.join(d.models, name + ".safetensors")
        if os.path.exists(p):
            out.append((name, None, p))
    return out


def test_every_tensor_equals_the_file(loaded_daemon):
    """Every tensor viewed through the daemon has the file's bytes, dtype and shape."""
    d = loaded_daemon
    with d.client() as c:
        for model, comp, path in model_files(d):
            stf = STFile(path)
            raw = open(path, "rb").read()
            with c.load(model, component=comp) as pin:
                for name, e in stf.entries.items():
                    arr, dt = pin.tensor_with_dtype(name, comp)
                    want = raw[8 + stf.header_len + e.begin:8 + stf.header_len + e.end]
                    assert dt == e.dtype, (model, name, dt, e.dtype)
                    assert arr.tobytes() == want, (model, name)
                    assert not arr.flags.writeable, (model, name)
                    assert weightd.tensor_dtype(arr) == e.dtype
                    del arr


def test_safe_open_served_by_daemon(loaded_daemon):
    d = loaded_daemon
    for model, comp, path in model_files(d):
        with warnings.catch_warnings():
            warnings.simplefilter("error", weightd.WeightdFallbackWarning)
            f = weightd.safe_open(path, socket=d.socket)
        assert f.source == "daemon", (path, f.fallback_reason)
        stf = STFile(path)
        for name in f.keys():
            assert f.get_tensor(name).tobytes() == stf.array(name).tobytes(), (path, name)


def pins(c):
    return c.stats()["pins"]


def test_view_holds_its_pin(loaded_daemon):
    """release() refuses while a view (or a slice of one) lives, and works after; a released
    pin gives no views; close() refuses while views live; views outlive the Client object."""
    c = loaded_daemon.client()
    pin = c.load("sd-tiny", component="unet")
    arr = pin.tensor("conv_in.weight")
    want = arr.tobytes()
    part = arr[1:]
    del arr
    assert pin.live_views() == 1, "a slice keeps its view's owner alive"
    with pytest.raises(weightd.BusyError) as ei:
        pin.release()
    assert "live views" in str(ei.value), str(ei.value)
    assert pins(c) == 1 and not pin.released
    with pytest.raises(weightd.BusyError):
        c.close()
    assert part.tobytes() == want[len(want) - part.nbytes:]
    del part
    gc.collect()
    pin.release()
    assert pins(c) == 0
    with pytest.raises(weightd.ReleasedError):
        pin.tensor("conv_in.weight")

    # A view outlives its Client object: the pin and the mapping stay until it goes.
    view = c.load("vae-tiny").tensor("decoder.conv_in.weight")
    want = view.tobytes()
    del c
    gc.collect()
    with loaded_daemon.client() as o:
        assert o.stats()["pins_total"] == 1, "the view's pin was dropped with its client"
    assert view.tobytes() == want
    del view
    gc.collect()
    with loaded_daemon.client() as o:
        wait_for(lambda: o.stats()["pins_total"] == 0, what="the last view's pin to go")


READER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, %(pkg)r)
    import weightd

    def status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
        return out

    before = status()
    c = weightd.connect(%(sock)r)
    pin = c.load(%(model)r)
    names = json.loads(sys.argv[1])
    total = 0
    views = [pin.tensor(n) for n in names]
    for v in views:
        total += int(v.view("uint8").sum()) if v.nbytes else 0
    after = status()
    print(json.dumps({"before": before, "after": after, "sum": total,
                      "nbytes": sum(v.nbytes for v in views)}), flush=True)
    sys.stdin.readline()
""")


def test_many_processes_one_copy(loaded_daemon, tmp_path):
    """Four processes read every byte of one model: the host cache holds it once, and each
    process maps it shared (RssShmem grows by the model, RssAnon does not)."""
    d = loaded_daemon
    gen = subprocess.run([os.path.join(BUILD, "weightctl"), "gen", "--preset", "llama", "--size",
                          "32M", "--shards", "1", os.path.join(d.models, "llama-32m")],
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    with d.client() as c:
        c.scan()
        m = c.model("llama-32m")
        idx = [n for n in os.listdir(os.path.join(d.models, "llama-32m"))
               if n.endswith(".safetensors")]
        names = []
        for n in idx:
            names += list(STFile(os.path.join(d.models, "llama-32m", n)).entries)
        base = c.stats()
    code = READER % {"pkg": os.path.join(ROOT, "bindings", "python"), "sock": d.socket,
                     "model": "llama-32m"}
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(names)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        reports = [json.loads(p.stdout.readline()) for p in procs]
        with d.client() as c:
            st = c.stats()
        sums = {r["sum"] for r in reports}
        assert len(sums) == 1, "processes read different bytes: %s" % sums
        grown = st["host_bytes"] - base["host_bytes"]
        assert m.nbytes <= grown <= m.nbytes * 1.01 + (1 << 21), \
            "host cache grew by %d bytes for a %d-byte model read by 4 processes: %s" % (
                grown, m.nbytes, st)
        for r in reports:
            shm = r["after"]["RssShmem"] - r["before"]["RssShmem"]
            anon = r["after"]["RssAnon"] - r["before"]["RssAnon"]
            assert shm >= m.nbytes * 0.9, "RssShmem grew by %d for %d bytes: %s" % (
                shm, m.nbytes, r)
            assert anon < m.nbytes / 2, "RssAnon grew by %d: a private copy? %s" % (anon, r)
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
            p.wait(10)
