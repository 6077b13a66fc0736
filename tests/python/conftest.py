"""Fixtures for the Python binding's tests (run by tests/run.sh, or `python3 -m pytest
tests/python` from the source tree).

WD_BUILD names the build directory (build/ or build-san/); WD_CORPUS the reference corpus.
Tests that need libweightd skip, with the reason, when it cannot be loaded into this
interpreter -- in build-san/ it is ASan-instrumented and python has no ASan runtime -- and
tests that need the host-tier loader skip while the daemon cannot load to the host. The
daemon fixture starts a real build/weightd on a temporary socket, state dir and generated
model set, and always kills it in teardown.
"""

import errno
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))

BUILD = os.environ.get("WD_BUILD") or os.path.join(ROOT, "build")
os.environ.setdefault("WD_BUILD", BUILD)
CORPUS = os.environ.get("WD_CORPUS") or os.path.join(ROOT, "..", "shared", "corpus")

import weightd  # noqa: E402
from weightd import _native  # noqa: E402

DEMO_MODELS = ("llama-tiny", "sd-tiny", "vae-tiny")


def fnv1a64(data):
    """FNV-1a 64 of @data, as the corpus .tensors.txt files list it (vectorised: numpy)."""
    h = 0xcbf29ce484222325
    for b in bytes(data):
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def corpus_listing(name):
    """[(tensor, dtype, shape, nbytes, fnv)] from CORPUS/NAME.tensors.txt."""
    out = []
    with open(os.path.join(CORPUS, name + ".tensors.txt")) as f:
        for line in f:
            if not line.strip():
                continue
            t, dt, shape, nb, h = line.rstrip("\n").split("\t")
            dims = [int(x) for x in shape.strip("[]").split(",") if x.strip()]
            out.append((t, dt, tuple(dims), int(nb), int(h, 16)))
    return out


@pytest.fixture(scope="session")
def corpus():
    if not os.path.isdir(CORPUS):
        pytest.skip("no reference corpus at %s (set WD_CORPUS)" % CORPUS)
    return CORPUS


@pytest.fixture(scope="session")
def lib():
    try:
        return _native.lib()
    except weightd.LibraryUnavailableError as e:
        pytest.skip("libweightd cannot be loaded into this python: %s" % e.message)


class Daemon:
    """A build/weightd child process with its own socket, state dir and models."""

    def __init__(self, root, models, extra_args=(), env=None):
        self.env = env  # the daemon's environment; None: this process's
        self.root = root
        self.models = models
        self.socket = os.path.join(root, "sock")
        self.state = os.path.join(root, "state")
        self.log = os.path.join(root, "weightd.log")
        self.args = [os.path.join(BUILD, "weightd"), "--foreground", "--socket", self.socket,
                     "--state-dir", self.state, "--models", models] + list(extra_args)
        self.proc = None

    def start(self, expect_models):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + 10
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weightd exited with %d at start-up:\n%s"
                                   % (self.proc.returncode, self.tail()))
            try:
                with weightd.connect(self.socket, timeout_ms=2000) as c:
                    names = {m.name for m in c.models()}
                    if set(expect_models) <= names:
                        return
                    last = "published so far: %s" % sorted(names)
            except weightd.DaemonUnavailableError as e:
                last = str(e)
            except weightd.WeightdError as e:
                # The socket exists before the daemon accepts on it: a hello sent while it
                # still starts (a slow, busy machine) times out. Not ready yet, not a failure.
                if e.errno != errno.ETIMEDOUT:
                    raise
                last = str(e)
            time.sleep(0.01)
        raise RuntimeError("weightd not ready in 10 s (%s):\n%s" % (last, self.tail()))

    def tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def client(self):
        return weightd.connect(self.socket)


def gen_demo(dst):
    ctl = os.path.join(BUILD, "weightctl")
    r = subprocess.run([ctl, "gen", "--preset", "demo", dst], capture_output=True, text=True,
                       timeout=60)
    if r.returncode:
        raise RuntimeError("weightctl gen failed (%d): %s" % (r.returncode, r.stderr))


@pytest.fixture
def daemon_factory(lib, tmp_path):
    """start(extra_args=(), corpus_files=(), env=None) -> a running Daemon over the demo
    models (plus copies of the named corpus files), with environment @env (None: this
    process's); every daemon started is stopped in teardown."""
    if not os.access(os.path.join(BUILD, "weightd"), os.X_OK):
        pytest.skip("no daemon binary at %s/weightd (build it with make)" % BUILD)
    started = []

    def start(extra_args=(), corpus_files=(), env=None):
        root = tempfile.mkdtemp(prefix="wdpy.", dir=str(tmp_path))
        models = os.path.join(root, "models")
        gen_demo(models)
        expect = list(DEMO_MODELS)
        for name in corpus_files:
            shutil.copy(os.path.join(CORPUS, name + ".safetensors"), models)
            expect.append(name)
        d = Daemon(root, models, extra_args, env)
        started.append(d)
        d.start(expect)
        return d

    yield start
    gc.collect()
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def host_loads_work(d):
    """None when the daemon can load to the host tier and the library can map the host
    cache; otherwise the reason (for pytest.skip)."""
    if not _native.has_tensor_data():
        return ("libweightd has no weightd_tensor_data(): the host-cache mapping is not in "
                "this build")
    with d.client() as c:
        try:
            c.load("vae-tiny", pin=False)
        except weightd.NotSupportedError as e:
            return "the daemon cannot load to the host tier in this build: %s" % e.message
    return None


@pytest.fixture
def loaded_daemon(daemon_factory):
    d = daemon_factory(corpus_files=("all_dtypes", "scalars_and_empty")
                       if os.path.isdir(CORPUS) else ())
    why = host_loads_work(d)
    if why:
        pytest.skip(why)
    return d


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(0.01)


def need(module):
    """Imports and returns @module (a PyPI package of scripts/python/test.txt: torch,
    safetensors, transformers, diffusers). `make test` runs the tests in the environment
    scripts/pyenv.sh makes, which has them, and sets WD_PYENV=1: there a missing one is a
    failure. Under a plain interpreter (pytest by hand) the test skips, saying so."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("WD_PYENV") == "1":
            raise AssertionError("%s is missing from the test environment (%s): rerun "
                                 "scripts/pyenv.sh test" % (module, e)) from None
        # Called at module level (torch = need("torch")): the whole module skips.
        pytest.skip("%s is not installed in this python (make test runs these tests in "
                    "the environment of scripts/pyenv.sh test)" % module,
                    allow_module_level=True)


def file_range(path, name):
    """The bytes of tensor @name in safetensors file @path, read with plain file I/O."""
    import json
    import struct
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(n))
        b, e = hdr[name]["data_offsets"]
        f.seek(8 + n + b)
        return f.read(e - b)


def read_bytes_of(pid):
    """read_bytes of /proc/PID/io (what the process made the kernel read from storage)."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


__all__ = ["fnv1a64", "corpus_listing", "wait_for", "host_loads_work", "errno", "need",
           "file_range"]
