#!/usr/bin/env python3
"""weightd against the loaders people use today, on one generated checkpoint, in one run.

    make bench-peers [SIZE=2G]          (scripts/pyenv.sh bench installs the peers)
    PY bench/bench_peers.py [--size 2G] [--build DIR] [--shards N] [--keep DIR]

A LLaMA-like F32 checkpoint of --size tensor bytes in --shards shards (weightctl gen --preset
llama, with its config.json) is written to a temporary folder and served by a private
build/weightd. Every reader runs in a fresh python process and is timed inside it from
before its first call to after it has touched every byte it loaded (an XOR over every
8-byte word of every tensor: an untouched mmap is not a load); imports are outside the
clock. Before every cold run the checkpoint's pages are dropped from the page cache
(/proc/sys/vm/drop_caches as root, else posix_fadvise(DONTNEED) per file) and, for weightd,
the model is unloaded from the daemon.

Readers:
  fromfile          numpy.fromfile of each shard (the floor: one read, no format)
  st_numpy          safetensors.safe_open(framework="np"), get_tensor of each
  st_torch          safetensors.torch.load_file of each shard
  fastsafetensors   fastsafetensors' SafeTensorsFileLoader, nogds=True, device cpu
  runai             runai_model_streamer.SafetensorsStreamer, its default concurrency
  hf                transformers AutoModelForCausalLM.from_pretrained(dir)
  hf_weightd        the same under weightd.patch() (the shared cache)
  weightd           connect, load (a pin on the host tier), Pin.tensors()
and the raw read limit: weightctl bench's O_DIRECT io_uring read of the same files, in
this run. Each reader cold (caches dropped) and warm (a second process; for weightd the
model is resident in the daemon). Then four processes of the same reader at once (cold):
total bytes read from storage (/proc/PID/io read_bytes of the four, plus the daemon's for
weightd) and total PSS (/proc/PID/smaps_rollup of the four while all hold their tensors,
plus the daemon's for weightd). Then four processes that each want BF16 from the F32
checkpoint: the peers convert in each process (load_file + .to(bfloat16)), weightd's daemon
converts once (load(dtype="BF16")) and the four share it: total CPU time (user + system of
the four, plus the daemon's for weightd) and total PSS.

The host cache's pages: as root, the run sets /sys/kernel/mm/transparent_hugepage/
shmem_enabled from never (or deny) to advise before the daemon starts, the deployment step of
docs/config.md ("Huge pages"), and puts the old value back at exit (--shmem-thp keep, or
SHMEM_THP=keep, leaves it); the output and the JSON say which value ran and which pages the
cache got. It changes nothing for the peers (the page cache does not go through it).

Printed: a table per part (GB/s, seconds, RSS, PSS, ratios against the fastest peer and
the raw read), the targets and whether they are met, and as the last line one JSON object.
Targets (issue 16): weightd cold >= the fastest peer cold and >= 90% of the raw O_DIRECT read;
weightd warm >= 1.5x st_torch warm; four processes: weightd's disk bytes = 1x the model and
its total PSS ~ 1x the model.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PKG = os.path.join(ROOT, "bindings", "python")
PEERS = ["fromfile", "st_numpy", "st_torch", "fastsafetensors", "runai", "hf"]
WEIGHTD = ["weightd", "hf_weightd"]
GB = 1e9


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    return int(float(s[:-1]) * mult[s[-1]]) if s[-1] in mult else int(s)


# ---------------------------------------------------------------- child side

def _xor_np(a, acc):
    import numpy as np
    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    n = len(b) // 8 * 8
    if n:
        acc ^= int(np.bitwise_xor.reduce(b[:n].view(np.uint64)))
    for i, x in enumerate(b[n:].tolist()):
        acc ^= x << (8 * i)
    return acc, len(b)


def _xor_torch(t, acc):
    import torch
    t = t.detach().contiguous().reshape(-1)
    if t.dtype == torch.bfloat16 or t.element_size() != 1:
        t = t.view(torch.uint8)
    return _xor_np(t.numpy(), acc)


def _rollup():
    rss = pss = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def _shards(model):
    with open(os.path.join(model, "model.safetensors.index.json")) as f:
        wm = json.load(f)["weight_map"]
    return [os.path.join(model, s) for s in sorted(set(wm.values()))], set(wm)


def child(reader, model, socket, hold, bf16):
    """Runs one reader; prints one JSON line; with @hold waits for a line on stdin first
    (the parent measures PSS meanwhile)."""
    import numpy as np
    shards, names = _shards(model)
    keep = []
    acc = 0
    nbytes = 0
    phases = None
    # Imports outside the clock, for every reader alike.
    if reader in ("st_numpy", "st_torch", "hf", "hf_weightd") or bf16:
        import torch  # noqa: F401
    if reader in ("st_numpy", "st_torch"):
        import safetensors.numpy  # noqa: F401
        import safetensors.torch  # noqa: F401
    if reader == "fastsafetensors":
        import fastsafetensors  # noqa: F401
    if reader == "runai":
        import runai_model_streamer  # noqa: F401
    if reader in ("hf", "hf_weightd"):
        import transformers  # noqa: F401
    if reader in ("weightd", "hf_weightd"):
        sys.path.insert(0, PKG)
        import weightd  # noqa: F401
        if reader == "hf_weightd":
            weightd.patch(socket=socket)
    rss0, pss0 = _rollup()
    t0 = time.perf_counter()
    c0 = os.times()
    if reader == "fromfile":
        for p in shards:
            a = np.fromfile(p, dtype=np.uint8)
            keep.append(a)
            acc, n = _xor_np(a, acc)
            nbytes += n
    elif reader == "st_numpy":
        from safetensors import safe_open
        for p in shards:
            with safe_open(p, framework="np") as f:
                for k in f.keys():
                    a = f.get_tensor(k)
                    keep.append(a)
                    acc, n = _xor_np(a, acc)
                    nbytes += n
    elif reader == "st_torch":
        import torch
        from safetensors.torch import load_file
        for p in shards:
            for k, t in load_file(p).items():
                if bf16:
                    t = t.to(torch.bfloat16)
                keep.append(t)
                acc, n = _xor_torch(t, acc)
                nbytes += n
    elif reader == "fastsafetensors":
        from fastsafetensors import SafeTensorsFileLoader, SingleGroup
        loader = SafeTensorsFileLoader(SingleGroup(), "cpu", nogds=True)
        loader.add_filenames({0: shards})
        fb = loader.copy_files_to_device()
        for k in sorted(names):
            t = fb.get_tensor(k)
            keep.append(t)
            acc, n = _xor_torch(t, acc)
            nbytes += n
        keep.append((loader, fb))
    elif reader == "runai":
        from runai_model_streamer import SafetensorsStreamer
        with SafetensorsStreamer() as st:
            for p in shards:
                st.stream_file(p)
                for k, t in st.get_tensors():
                    t = t.clone()  # the streamer reuses its buffer
                    keep.append(t)
                    acc, n = _xor_torch(t, acc)
                    nbytes += n
    elif reader in ("hf", "hf_weightd"):
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(model)
        sd = m.state_dict()
        for k in sorted(names):
            acc, n = _xor_torch(sd[k], acc)
            nbytes += n
        keep.append(m)
    elif reader == "weightd":
        import weightd
        c = weightd.connect(socket)
        t1 = time.perf_counter()
        pin = c.load(os.path.basename(model), dtype="BF16" if bf16 else None)
        t2 = time.perf_counter()
        arrs = pin.tensors(populate=True)
        t3 = time.perf_counter()
        for k in sorted(arrs):
            acc, n = _xor_np(arrs[k], acc)
            nbytes += n
        keep.append((c, pin, arrs))
        # Where the time went: attach, the load request (the daemon's disk -> cache read
        # when cold), the views with their pages populated (MADV_POPULATE_READ), the touch.
        phases = {"connect": t1 - t0, "load": t2 - t1, "views_populate": t3 - t2,
                  "touch": time.perf_counter() - t3, "load_result": pin.load_result}
    secs = time.perf_counter() - t0
    c1 = os.times()
    rss, pss = _rollup()
    # rss0/pss0: the process after its imports (python, numpy, torch...), before the clock:
    # what it holds for the model is the difference.
    out = {"reader": reader, "secs": secs, "bytes": nbytes, "xor": "%016x" % acc,
           "cpu": (c1.user - c0.user) + (c1.system - c0.system), "rss": rss, "pss": pss,
           "rss0": rss0, "pss0": pss0}
    if phases:
        out["phases"] = phases
    print(json.dumps(out), flush=True)
    if hold:
        sys.stdin.readline()


# ---------------------------------------------------------------- parent side

def proc_read_bytes(pid):
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_pss(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, args):
        self.args = args
        self.py = sys.executable
        self.tmp = args.keep or tempfile.mkdtemp(prefix="bench-peers.")
        self.models = os.path.join(self.tmp, "models")
        self.model = os.path.join(self.models, "llama")
        self.sock = os.path.join(self.tmp, "sock")
        self.daemon = None
        self.errors = {}

    def gen(self):
        if not os.path.exists(os.path.join(self.model, "config.json")):
            os.makedirs(self.models, exist_ok=True)
            subprocess.run([os.path.join(self.args.build, "weightctl"), "gen", "--preset",
                            "llama", "--size", str(self.args.size_bytes), "--dtype", "F32",
                            "--shards", str(self.args.shards), self.model], check=True,
                           stdout=subprocess.DEVNULL)
        self.files = _shards(self.model)[0]
        self.model_bytes = sum(os.path.getsize(p) for p in self.files)

    def start_daemon(self):
        log = open(os.path.join(self.tmp, "weightd.log"), "ab")
        budget = str(3 * self.model_bytes + (256 << 20))
        self.daemon = subprocess.Popen(
            [os.path.join(self.args.build, "weightd"), "--foreground", "--socket", self.sock,
             "--state-dir", os.path.join(self.tmp, "state"), "--models", self.models,
             "--host-budget", budget], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        sys.path.insert(0, PKG)
        import weightd
        deadline = time.monotonic() + 60
        while True:
            try:
                with weightd.connect(self.sock, timeout_ms=2000) as c:
                    if any(m.name == "llama" for m in c.models()):
                        self.daemon_pss0 = proc_pss(self.daemon.pid)
                        return
            except weightd.WeightdError:
                pass
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise SystemExit("bench-peers: weightd did not publish the model; see %s"
                                 % os.path.join(self.tmp, "weightd.log"))
            time.sleep(0.05)

    def host_pages(self):
        """The pages behind the daemon's host cache ("4k", "thp", "hugetlb")."""
        import weightd
        with weightd.connect(self.sock) as c:
            st = c.stats()
        return "%s (%d bytes)" % (st["host_pages"], st["host_page_size"])

    def stop_daemon(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def stop(self):
        self.stop_daemon()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def unload(self):
        import weightd
        with weightd.connect(self.sock) as c:
            for dt in (None,):
                try:
                    c.unload("llama")
                except weightd.WeightdError:
                    pass

    def drop_caches(self):
        """Drops the checkpoint's pages from the page cache (posix_fadvise DONTNEED on each
        file: its pages are clean). Only the checkpoint's: python's and torch's libraries
        stay cached, so a child's read_bytes counts the model and nothing else."""
        for p in self.files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def spawn(self, reader, hold=False, bf16=False):
        cmd = [self.py, os.path.abspath(__file__), "--child", reader, "--model", self.model,
               "--socket", self.sock] + (["--hold"] if hold else []) + \
            (["--bf16"] if bf16 else [])
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
                   WD_BUILD=os.path.abspath(self.args.build))
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)

    def result(self, p):
        line = p.stdout.readline()
        if not line:
            err = p.stderr.read()
            p.wait()
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "no output")
        return json.loads(line)

    def one(self, reader, cold):
        if cold:
            if reader in WEIGHTD:
                self.unload()
            self.drop_caches()
        d0 = proc_read_bytes(self.daemon.pid)
        h0 = self.host_reads()
        p = self.spawn(reader)
        r = self.result(p)
        p.wait()
        r["daemon_disk"] = proc_read_bytes(self.daemon.pid) - d0
        if reader in WEIGHTD:
            # How the daemon read the files for this run: O_DIRECT, or through the page
            # cache (parts it found cached when it planned the load).
            h1 = self.host_reads()
            r["daemon_read_direct"] = h1[0] - h0[0]
            r["daemon_read_buffered"] = h1[1] - h0[1]
        return r

    def host_reads(self):
        import weightd
        with weightd.connect(self.sock) as c:
            st = c.host_stats()
        return st["read_direct_bytes"], st["read_buffered_bytes"]

    def four(self, reader, bf16=False):
        if reader in WEIGHTD:
            # A fresh daemon: its arena then holds no page of earlier runs, so its PSS
            # counts this run's cache and nothing else (freed extents keep their pages).
            self.stop_daemon()
            self.start_daemon()
        self.drop_caches()
        d0 = proc_read_bytes(self.daemon.pid)
        c0 = proc_cpu(self.daemon.pid)
        # The daemon's PSS is counted over its PSS at start (no model loaded yet): the
        # cache's pages it maps stay mapped after an unload (the arena keeps them), so a
        # delta over the moment before would miss them.
        dp0 = self.daemon_pss0
        t0 = time.perf_counter()
        ps = [self.spawn(reader, hold=True, bf16=bf16) for _ in range(4)]
        rs = []
        try:
            rs = [self.result(p) for p in ps]
            wall = time.perf_counter() - t0
            disk = sum(proc_read_bytes(p.pid) for p in ps)
            pss = sum(proc_pss(p.pid) for p in ps)
            # The daemon's PSS while the four still hold the cache's pages: PSS splits a page
            # among the processes that map it at the moment it is read, so read after the
            # four exit, the daemon's share is the whole page again and the sum counts the
            # cache 1 + 4/5 times (the 1.80x of the first runs, RESULTS.md).
            dpss = proc_pss(self.daemon.pid) if reader in WEIGHTD else 0
        finally:
            for p in ps:
                try:
                    p.stdin.write("\n")
                    p.stdin.flush()
                except OSError:
                    pass
            for p in ps:
                p.wait()
        # pss: the four processes' PSS less what each held before loading (imports), i.e.
        # the memory the model costs them; pss_total: their whole PSS.
        out = {"wall": wall, "disk": disk, "pss_total": pss,
               "pss": pss - sum(r["pss0"] for r in rs), "cpu": sum(r["cpu"] for r in rs),
               "xor": rs[0]["xor"]}
        if reader in WEIGHTD:
            # The daemon's share: what it read, the CPU it spent and the PSS it gained
            # (its share of the cache's pages, split with the four, read while they hold).
            out["daemon_disk"] = proc_read_bytes(self.daemon.pid) - d0
            out["daemon_cpu"] = proc_cpu(self.daemon.pid) - c0
            out["daemon_pss"] = dpss - dp0
            out["disk"] += out["daemon_disk"]
            out["cpu"] += out["daemon_cpu"]
            out["pss"] += out["daemon_pss"]
            out["pss_total"] += out["daemon_pss"]
        return out

    def raw_read(self):
        self.unload()
        env = dict(os.environ, WEIGHTD_STATE_DIR=os.path.join(self.tmp, "state"))
        r = subprocess.run([os.path.join(self.args.build, "weightctl"), "bench", "--socket",
                            self.sock, "--json", "--no-record", "llama"],
                           capture_output=True, text=True, timeout=1800, env=env)
        if r.returncode:
            raise RuntimeError(r.stderr.strip()[-500:])
        return json.loads(r.stdout)


SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


def shmem_mode():
    """The selected value of shmem_enabled ("never", "advise", ...), or None."""
    try:
        with open(SHMEM_ENABLED) as f:
            text = f.read()
        return text.split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return None


def shmem_set(mode):
    """Writes @mode into shmem_enabled; None when done, else why not."""
    try:
        with open(SHMEM_ENABLED, "w") as f:
            f.write(mode)
    except OSError as e:
        return str(e)
    return None if shmem_mode() == mode else "the kernel kept %s" % shmem_mode()


class ShmemTHP:
    """The deployment step of docs/config.md ("Huge pages") for the length of the run: with
    --shmem-thp advise, as root, a shmem_enabled of never/deny is set to advise before the
    daemon starts (so its host cache gets transparent huge pages) and put back at exit."""

    def __init__(self, want):
        self.before = shmem_mode()
        self.run = self.before
        self.changed = False
        self.why = None
        if want != "advise" or self.before not in ("never", "deny"):
            return
        if os.geteuid() != 0:
            self.why = "not root"
            return
        self.why = shmem_set("advise")
        if self.why is None:
            self.run, self.changed = "advise", True

    def restore(self):
        if self.changed:
            self.why = shmem_set(self.before)
            self.changed = self.why is not None

    def describe(self):
        if self.run == self.before:
            return "shmem_enabled %s (unchanged%s)" % (self.before, ": " + self.why
                                                      if self.why else "")
        return "shmem_enabled %s for this run (was %s, put back at exit)" % (self.run,
                                                                          self.before)

    def json(self):
        return {"before": self.before, "run": self.run, "why_unchanged": self.why}


def fmt_b(n):
    return "%.2f GB" % (n / GB)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--socket")
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--size", default=os.environ.get("SIZE", "2G"))
    ap.add_argument("--shards", type=int, default=0,
                    help="default: one per 512 MiB, at least 2 (LLaMA-like)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--keep", help="keep the checkpoint in this folder (reused next time)")
    ap.add_argument("--readers", default=",".join(PEERS + WEIGHTD))
    ap.add_argument("--shmem-thp", choices=("advise", "keep"),
                    default=os.environ.get("SHMEM_THP", "advise"),
                    help="advise (default): as root, set shmem_enabled from never to advise "
                    "for the run, as docs/config.md says to deploy (put back at exit); keep: "
                    "leave it")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.socket, args.hold, args.bf16)
        return 0
    args.size_bytes = parse_size(args.size)
    if not args.shards:
        args.shards = max(2, args.size_bytes // (512 << 20))
    readers = args.readers.split(",")
    b = Bench(args)
    res = {"size": args.size_bytes, "shards": args.shards, "cold": {}, "warm": {},
           "four": {}, "bf16_four": {}, "errors": {},
           "loadavg_start": round(os.getloadavg()[0], 2)}
    # SIGTERM (and SIGINT, as KeyboardInterrupt) unwind through the finally below, which
    # stops the daemon and puts shmem_enabled back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    thp = ShmemTHP(args.shmem_thp)
    res["shmem_enabled"] = thp.json()
    try:
        b.gen()
        b.start_daemon()
        res["model_bytes"] = b.model_bytes
        res["host_pages"] = b.host_pages()
        print("bench-peers: %s LLaMA-like F32 checkpoint in %d shards (%s), python %s"
              % (fmt_b(b.model_bytes), args.shards, b.model, sys.version.split()[0]))
        print("  host cache pages: %s; %s; load average %.2f"
              % (res["host_pages"], thp.describe(), res["loadavg_start"]), flush=True)
        try:
            raw = b.raw_read()
            res["raw"] = raw
        except Exception as e:  # noqa: BLE001 -- reported, the rest still runs
            res["errors"]["raw"] = str(e)
            raw = None
        for reader in readers:
            for mode in ("cold", "warm"):
                try:
                    r = b.one(reader, cold=(mode == "cold"))
                    res[mode][reader] = r
                    print("  %-16s %-4s %6.2f GB/s %7.3f s  rss %s  pss %s (+%s over its "
                          "imports)  cpu %.2f s  xor %s"
                          % (reader, mode, r["bytes"] / r["secs"] / GB, r["secs"],
                             fmt_b(r["rss"]), fmt_b(r["pss"]), fmt_b(r["pss"] - r["pss0"]),
                             r["cpu"], r["xor"]), flush=True)
                    ph = r.get("phases")
                    if ph:
                        print("  %-16s      connect %.3f s, load %.3f s, views + populate "
                              "%.3f s, touch %.3f s; the daemon read %s O_DIRECT, %s "
                              "buffered" % ("", ph["connect"], ph["load"],
                                            ph["views_populate"], ph["touch"],
                                            fmt_b(r.get("daemon_read_direct", 0)),
                                            fmt_b(r.get("daemon_read_buffered", 0))),
                              flush=True)
                except Exception as e:  # noqa: BLE001
                    res["errors"]["%s_%s" % (reader, mode)] = str(e)[-300:]
                    print("  %-16s %-4s failed: %s" % (reader, mode, str(e)[-200:]),
                          flush=True)
        for reader in readers:
            if reader in ("hf", "hf_weightd"):
                continue
            try:
                r = b.four(reader)
                res["four"][reader] = r
                print("  4 x %-12s disk %s (%.2fx model)  pss for the model %s (%.2fx model; "
                      "%s with imports)  wall %.2f s"
                      % (reader, fmt_b(r["disk"]), r["disk"] / b.model_bytes, fmt_b(r["pss"]),
                         r["pss"] / b.model_bytes, fmt_b(r["pss_total"]), r["wall"]),
                      flush=True)
            except Exception as e:  # noqa: BLE001
                res["errors"]["four_" + reader] = str(e)[-300:]
                print("  4 x %-12s failed: %s" % (reader, str(e)[-200:]), flush=True)
        for reader in ("st_torch", "weightd"):
            if reader not in readers:
                continue
            try:
                r = b.four(reader, bf16=True)
                res["bf16_four"][reader] = r
                print("  4 x %-12s BF16 from F32: cpu %.2f s  pss %s  wall %.2f s"
                      % (reader, r["cpu"], fmt_b(r["pss"]), r["wall"]), flush=True)
            except Exception as e:  # noqa: BLE001
                res["errors"]["bf16_" + reader] = str(e)[-300:]
                print("  4 x %-12s BF16 failed: %s" % (reader, str(e)[-200:]), flush=True)
    finally:
        b.stop()
        thp.restore()
        if thp.changed:
            print("bench-peers: could not put shmem_enabled back to %s: %s"
                  % (thp.before, thp.why), file=sys.stderr)
    res["loadavg_end"] = round(os.getloadavg()[0], 2)
    res["shmem_enabled"]["restored_to"] = shmem_mode()
    print("  shmem_enabled now %s; load average %.2f at the end"
          % (shmem_mode(), res["loadavg_end"]))
    summarize(res, raw)
    print(json.dumps(res, sort_keys=True))
    return 0


def _gbps(r):
    return r["bytes"] / r["secs"] / GB if r and r.get("secs") else 0.0


def summarize(res, raw):
    cold, warm, four = res["cold"], res["warm"], res["four"]
    peers_cold = {k: _gbps(v) for k, v in cold.items() if k in PEERS and k != "fromfile"}
    best = max(peers_cold.items(), key=lambda kv: kv[1]) if peers_cold else (None, 0.0)
    raw_gbps = 0.0
    if raw and isinstance(raw.get("storage"), dict):
        # weightctl bench: a cold io_uring read of the same files (O_DIRECT when "direct").
        raw_gbps = float(raw["storage"].get("cold_bps") or 0) / GB
    wd_cold = _gbps(cold.get("weightd"))
    t = {}
    t["cold_vs_fastest_peer"] = wd_cold / best[1] if best[1] else None
    t["fastest_peer_cold"] = best[0]
    t["cold_vs_raw"] = wd_cold / raw_gbps if raw_gbps else None
    t["raw_gbps"] = raw_gbps or None
    if raw and isinstance(raw.get("host"), dict):
        # The daemon's own cold load (disk -> cache, no python), measured by weightctl bench.
        t["daemon_cold_gbps"] = float(raw["host"].get("cold_bps") or 0) / GB
        t["daemon_cold_vs_raw"] = t["daemon_cold_gbps"] / raw_gbps if raw_gbps else None
    stw = warm.get("st_torch")
    wdw = warm.get("weightd")
    t["warm_vs_st_torch"] = (stw["secs"] / wdw["secs"]) if stw and wdw else None
    wd4 = four.get("weightd")
    if wd4:
        t["four_disk_x_model"] = wd4["disk"] / res["model_bytes"]
        t["four_pss_x_model"] = wd4["pss"] / res["model_bytes"]
    b4 = res["bf16_four"]
    if b4.get("weightd") and b4.get("st_torch"):
        t["bf16_cpu_ratio"] = b4["st_torch"]["cpu"] / max(b4["weightd"]["cpu"], 1e-9)
        t["bf16_pss_ratio"] = b4["st_torch"]["pss"] / max(b4["weightd"]["pss"], 1)
    met = {
        "cold_ge_fastest_peer": t["cold_vs_fastest_peer"] is not None
        and t["cold_vs_fastest_peer"] >= 1.0,
        "cold_ge_90pct_raw": t["cold_vs_raw"] is not None and t["cold_vs_raw"] >= 0.9,
        "warm_ge_1.5x_st_torch": t["warm_vs_st_torch"] is not None
        and t["warm_vs_st_torch"] >= 1.5,
        "four_disk_1x": wd4 is not None and t["four_disk_x_model"] <= 1.05,
        "four_pss_about_1x": wd4 is not None and t["four_pss_x_model"] <= 1.25,
    }
    res["ratios"] = t
    res["targets_met"] = met
    print("ratios: " + ", ".join("%s %s" % (k, ("%.2f" % v) if isinstance(v, float) else v)
                                 for k, v in t.items()))
    print("targets: " + ", ".join("%s %s" % (k, "MET" if v else "not met")
                                  for k, v in met.items()))


if __name__ == "__main__":
    sys.exit(main())
