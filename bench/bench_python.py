#!/usr/bin/env python3
"""Python time-to-tensors with an already-resident model, against reading the file.

    /usr/bin/python3 bench/bench_python.py [--build DIR] [--tensors 1000] [--size 2G]
                                           [--compare-size 512M] [--runs 5] [--keep DIR]

For each model size (--size, default 2 GiB -- an SDXL UNet is ~1,680 tensors and 5 GB -- and
--compare-size, default 512 MiB, so that the ratio is shown at both), writes one safetensors
file of --tensors F16 tensors with a small Python writer, starts a private build/weightd on
it, makes it resident with a pin held by this process, then measures, each in a fresh python
process (median of --runs):

  weightd   connect, load (a hit: already resident) with a pin, and get every tensor as a
            read-only numpy view of the shared host cache (Pin.tensors(), one call); the
            phases (connect, load, tensors) are printed too;
  weightd_each  the same with one Pin.tensor(name) call per tensor (the names come from the
            file's header, parsed before the clock starts);
  fromfile  numpy.fromfile of the data (warm page cache) and one array per tensor;
  mmap      numpy.memmap of the file and one array per tensor (lazy: no byte read);
and, for the two zero-copy paths, the same plus touching one byte of every page (what using
the arrays costs at least). Times are measured inside the child from before the first call
(libweightd is loaded by connect(), inside the clock) to after the last array; python
start-up and imports (numpy, weightd) are excluded for every mode alike (reported apart).
weightd's time does not depend on the model's size (the mapping is O(1)); fromfile's grows
with it, so the ratio is printed for each size. The last line is one JSON object (the
default size's figures, the other size's under "at_SIZE"). Target (README): weightd >= 100x
faster than fromfile. When the daemon cannot load to the host tier, that is said in the
JSON ("skipped") and the baselines are still measured.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PKG = os.path.join(ROOT, "bindings", "python")


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def write_model(path, n, total):
    """n F16 tensors, (total / n) bytes each rounded to whole rows, deterministic bytes."""
    per = max(2, total // n // 2 * 2)
    cols = 256 if per >= 512 else per // 2
    rows = max(1, per // 2 // cols)
    nb = rows * cols * 2
    header = {"__metadata__": {"format": "pt", "writer": "bench_python"}}
    for i in range(n):
        header["layers.%d.weight" % i] = {"dtype": "F16", "shape": [rows, cols],
                                          "data_offsets": [i * nb, (i + 1) * nb]}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    block = bytes((i * 131 + 7) & 0xFF for i in range(nb))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _ in range(n):
            f.write(block)
    return nb * n


CHILD = r"""
import os, sys, time, json
t_start = time.perf_counter()
sys.path.insert(0, %(pkg)r)
import numpy as np
import weightd
from weightd.stfile import STFile
t_import = time.perf_counter()
mode, path, sock, touch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
PAGE = 4096

def touch_all(arrs):
    s = 0
    for a in arrs:
        b = a.reshape(-1).view(np.uint8)
        s += int(b[::PAGE].sum())
    return s

phases = {}
if mode == "weightd":
    t0 = time.perf_counter()
    c = weightd.connect(sock)
    ta = time.perf_counter()
    pin = c.load("bench1k")
    tb = time.perf_counter()
    arrs = list(pin.tensors().values())
    tc = time.perf_counter()
    if touch:
        touch_all(arrs)
    t1 = time.perf_counter()
    phases = {"connect_ms": (ta - t0) * 1e3, "load_ms": (tb - ta) * 1e3,
              "tensors_ms": (tc - tb) * 1e3}
    assert pin.load_result is None or pin.load_result["hit"], pin.load_result
elif mode == "weightd_each":
    stf = STFile(path)
    names = list(stf.entries)
    t0 = time.perf_counter()
    c = weightd.connect(sock)
    pin = c.load("bench1k")
    arrs = [pin.tensor(n) for n in names]
    if touch:
        touch_all(arrs)
    t1 = time.perf_counter()
    assert pin.load_result is None or pin.load_result["hit"], pin.load_result
elif mode == "fromfile":
    t0 = time.perf_counter()
    stf = STFile(path)
    raw = np.fromfile(path, dtype=np.uint8, offset=8 + stf.header_len)
    arrs = [raw[e.begin:e.end].view(np.float16).reshape(e.shape) for e in stf.entries.values()]
    t1 = time.perf_counter()
elif mode == "mmap":
    t0 = time.perf_counter()
    stf = STFile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + stf.header_len)
    arrs = [mm[e.begin:e.end].view(np.float16).reshape(e.shape) for e in stf.entries.values()]
    if touch:
        touch_all(arrs)
    t1 = time.perf_counter()
print(json.dumps(dict({"ms": (t1 - t0) * 1e3, "import_ms": (t_import - t_start) * 1e3,
                       "n": len(arrs), "bytes": int(sum(a.nbytes for a in arrs))}, **phases)))
"""


def run_child(mode, path, sock, touch, runs):
    code = CHILD % {"pkg": PKG}
    res = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, mode, path, sock, "1" if touch else "0"],
                             capture_output=True, text=True, timeout=300)
        wall = (time.perf_counter() - t0) * 1e3
        if out.returncode:
            raise RuntimeError("%s child failed: %s" % (mode, out.stderr[-2000:]))
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["wall_ms"] = wall
        res.append(r)
    phases = {k: statistics.median(r[k] for r in res) for k in res[0] if k.endswith("_ms")
              and k not in ("ms", "wall_ms", "import_ms")}
    return {"ms": statistics.median(r["ms"] for r in res), "phases": phases,
            "wall_ms": statistics.median(r["wall_ms"] for r in res),
            "import_ms": statistics.median(r["import_ms"] for r in res),
            "n": res[0]["n"], "bytes": res[0]["bytes"]}


def measure(a, size, work, keep, weightd):
    """Runs every mode on a model of @size ("512M", "2G") in @work; returns the result."""
    build = os.path.abspath(a.build)
    models = os.path.join(work, "models")
    os.makedirs(models, exist_ok=True)
    path = os.path.join(models, "bench1k.safetensors")
    total = parse_size(size)
    if not os.path.exists(path):
        write_model(path, a.tensors, total)
    sock = os.path.join(work, "sock")
    log = open(os.path.join(work, "weightd.log"), "ab")
    daemon = subprocess.Popen([os.path.join(build, "weightd"), "--foreground", "--socket", sock,
                               "--state-dir", os.path.join(work, "state"), "--models", models,
                               "--host-budget", str(2 * os.path.getsize(path) + (64 << 20))],
                              stdout=log, stderr=log)
    result = {"size": size, "tensors": a.tensors, "file_bytes": os.path.getsize(path),
              "runs": a.runs}
    print("model: %d F16 tensors, %s bytes (%.2f GiB), median of %d fresh processes"
          % (a.tensors, result["file_bytes"], result["file_bytes"] / (1 << 30), a.runs))
    try:
        c = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                c = weightd.connect(sock)
                if any(m.name == "bench1k" for m in c.models()):
                    break
                c.close()
                c = None
            except weightd.DaemonUnavailableError:
                pass
            time.sleep(0.02)
        if c is None:
            raise RuntimeError("the daemon did not publish the model in 15 s")
        # Warm the page cache for the baselines: they read a warm file, as the daemon did.
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
        pin = None
        try:
            t0 = time.perf_counter()
            pin = c.load("bench1k")
            result["first_load_ms"] = (time.perf_counter() - t0) * 1e3
            if not weightd._native.has_tensor_data():
                raise weightd.NotSupportedError(95, "libweightd has no weightd_tensor_data()")
        except weightd.WeightdError as e:
            result["skipped"] = "weightd path not measured: %s" % e
        rows = [("fromfile", False), ("mmap", False), ("mmap", True)]
        if "skipped" not in result:
            rows = [("weightd", False), ("weightd_each", False), ("weightd", True)] + rows
        for mode, touch in rows:
            r = run_child(mode, path, sock, touch, a.runs)
            key = mode + ("_touch" if touch else "")
            result[key + "_ms"] = round(r["ms"], 3)
            result[key + "_wall_ms"] = round(r["wall_ms"], 1)
            result["import_ms"] = round(r["import_ms"], 1)
            print("%-14s %9.3f ms  (process wall %7.1f ms, imports %5.1f ms, %d arrays, "
                  "%d bytes)" % (key, r["ms"], r["wall_ms"], r["import_ms"], r["n"], r["bytes"]))
            if r["phases"] and not touch:
                # Medians of each phase (they need not add up to the median of the sums).
                print("%-14s %s" % ("", ", ".join("%s %.3f ms" % (k[:-3], v)
                                                  for k, v in r["phases"].items())))
                for k, v in r["phases"].items():
                    result[key + "_" + k] = round(v, 3)
        if "weightd_ms" in result:
            result["speedup_vs_fromfile"] = round(result["fromfile_ms"] / result["weightd_ms"], 1)
            result["speedup_vs_mmap"] = round(result["mmap_ms"] / result["weightd_ms"], 2)
            result["speedup_each_vs_fromfile"] = round(result["fromfile_ms"]
                                                       / result["weightd_each_ms"], 1)
            result["speedup_touch_vs_mmap_touch"] = round(result["mmap_touch_ms"]
                                                          / result["weightd_touch_ms"], 2)
            result["target_met"] = result["speedup_vs_fromfile"] >= 100
            print("%s: weightd vs fromfile %.1fx (target >= 100x: %s), vs mmap %.2fx; "
                  "tensor() per name vs fromfile %.1fx; touched vs mmap touched %.2fx"
                  % (size, result["speedup_vs_fromfile"],
                     "met" if result["target_met"] else "NOT met", result["speedup_vs_mmap"],
                     result["speedup_each_vs_fromfile"],
                     result["speedup_touch_vs_mmap_touch"]))
        del pin
        c = None
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.environ.get("WD_BUILD", os.path.join(ROOT, "build")))
    ap.add_argument("--tensors", type=int, default=1000)
    ap.add_argument("--size", default="2G", help="model size (default 2G)")
    ap.add_argument("--compare-size", default="512M",
                    help="a second model size measured too, so both ratios are shown "
                         "(default 512M; \"\" for none)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", default=None, help="work directory to use and keep")
    a = ap.parse_args()
    os.environ["WD_BUILD"] = os.path.abspath(a.build)
    sys.path.insert(0, PKG)
    import weightd

    sizes = [a.size] + ([a.compare_size] if a.compare_size and
                        parse_size(a.compare_size) != parse_size(a.size) else [])
    out = {"bench": "python", "tensors": a.tensors, "runs": a.runs,
           "python": sys.version.split()[0]}
    for i, size in enumerate(sizes):
        work = os.path.join(a.keep, size) if a.keep else tempfile.mkdtemp(prefix="bench_python.")
        r = measure(a, size, work, bool(a.keep), weightd)
        if i == 0:
            out.update(r)
        else:
            out["at_" + size] = r
        print()
    if len(sizes) > 1 and "speedup_vs_fromfile" in out:
        print("weightd vs fromfile: %.1fx at %s (default), %.1fx at %s" % (
            out["speedup_vs_fromfile"], sizes[0],
            out["at_" + sizes[1]].get("speedup_vs_fromfile", 0), sizes[1]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
