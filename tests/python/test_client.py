"""The client API against a real daemon: registry, requests, errors, pins and their lifetime.
These run whether or not the daemon can load to the host; test_views.py needs loads."""

import ctypes
import errno
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import pytest

import weightd
from weightd import _native as N
from weightd import safe as wsafe

from conftest import DEMO_MODELS, ROOT, wait_for


def test_abi_mirror_matches_header(lib, tmp_path):
    """The ctypes structs have the sizes and field offsets of include/weightd.h."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to check the ctypes layouts against weightd.h")
    structs = {"weightd_attach_opts": N.AttachOpts, "weightd_model_info": N.ModelInfo,
               "weightd_component_info": N.ComponentInfo, "weightd_tensor_info": N.TensorInfo,
               "weightd_status": N.Status, "weightd_stats": N.Stats,
               "weightd_cache_stats": N.CacheStats,
               "weightd_tensor_loc": N.TensorLoc, "weightd_tensor_table": N.TensorTable}
    lines = []
    for cname, py in structs.items():
        lines.append('printf("%s size %%zu\\n", sizeof(struct %s));' % (cname, cname))
        for fname, _ in py._fields_:
            lines.append('printf("%s %s %%zu\\n", offsetof(struct %s, %s));'
                         % (cname, fname, cname, fname))
    src = tmp_path / "abi.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"weightd.h\"\n"
                   "int main(void) {\n%s\nreturn 0;\n}\n" % "\n".join(lines))
    exe = tmp_path / "abi"
    subprocess.run([cc, "-I", os.path.join(ROOT, "include"), "-o", str(exe), str(src)],
                   check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        cname, field, value = parts[0], parts[1], int(parts[2])
        py = structs[cname]
        got = ctypes_size(py) if field == "size" else getattr(py, field).offset
        assert got == value, "%s.%s: ctypes %d, C %d" % (cname, field, got, value)


def ctypes_size(t):
    import ctypes
    return ctypes.sizeof(t)


def test_socket_and_client_id(daemon):
    """Client.socket and Client.client_id (read from the library on first use) name the
    daemon's socket and each client's own number, and stay readable after close()."""
    a, b = daemon.client(), daemon.client()
    try:
        assert a.socket == b.socket == daemon.socket, (a.socket, b.socket, daemon.socket)
        assert isinstance(a.client_id, int) and a.client_id != b.client_id, \
            (a.client_id, b.client_id)
    finally:
        a.close()
    # b's are read for the first time after its close(): close() kept them.
    b.close()
    assert b.socket == daemon.socket and isinstance(b.client_id, int) and \
        b.client_id != a.client_id, (b.socket, b.client_id, a.client_id)


# Ring sizes asked in the hello (0: the daemon's default), in attach order.
RING_SIZES = [(0, 0), (16, 32), (0, 0), (0, 0), (64, 128), (0, 0)]


@pytest.mark.parametrize("pause_s", [0, 0.01], ids=["back to back", "idle between"])
def test_each_attach_gets_its_own_ring(daemon, pause_s):
    """The daemon makes the next default-size ring segment ahead, while idle: every client
    still gets a segment of its own (attach checks the ring header's client id against the
    reply's, so a segment handed out twice fails there) at the sizes it asked, whether the
    ready one was used (idle between) or not (back to back, or other sizes)."""
    lib = N.lib()
    handles = []
    try:
        for sq, cq in RING_SIZES:
            opts = N.AttachOpts(spin_us=20, sq_entries=sq, cq_entries=cq, client_name=b"rings",
                                attach_timeout_ms=2000)
            h = ctypes.c_void_p()
            ret = lib.weightd_attach(daemon.socket.encode(), ctypes.byref(opts),
                                     ctypes.byref(h))
            assert ret == 0, (sq, cq, ret, N.last_error())
            handles.append(h)
            time.sleep(pause_s)
        ids = [lib.weightd_client_id(h) for h in handles]
        assert len(set(ids)) == len(ids), ids
        for (sq, cq), h in zip(RING_SIZES, handles):
            assert lib.weightd_ping(h) == 0, (sq, cq, N.last_error())
    finally:
        for h in handles:
            lib.weightd_detach(h)


def test_models_and_state(daemon):
    with daemon.client() as c:
        models = {m.name: m for m in c.models()}
        assert set(DEMO_MODELS) <= set(models), sorted(models)
        sd = models["sd-tiny"]
        assert sorted(x.name for x in sd.components) == ["text_encoder", "unet", "vae"], \
            sd.components
        assert sd.n_tensors == sum(x.n_tensors for x in sd.components)
        assert c.model("llama-tiny").components[0].name == ""
        st = c.state("sd-tiny")
        assert st["state"] in ("absent", "resident"), st
        assert st["total"] == sd.nbytes, (st, sd.nbytes)
        meta = c.tensor_meta("sd-tiny", "conv_in.weight", "unet")
        assert meta.dtype == "F16" and len(meta.shape) == 4, meta
        s = c.stats()
        assert s["clients"] >= 1 and s["models"] >= 3, s
        # The host cache's pages: a kind and its size (4096, or a huge page's).
        assert s["host_pages"] in ("4k", "thp", "hugetlb"), s
        assert s["host_page_size"] == 4096 if s["host_pages"] == "4k" else \
            s["host_page_size"] >= 2 << 20, s
        cs = c.host_stats()
        assert cs["read_direct_bytes"] + cs["read_buffered_bytes"] == cs["read_bytes"], cs
        c.ping()


def test_meta_get_set(daemon):
    """Client.meta_get/meta_set are META_GET/META_SET (weightd_meta_get/_set): a value set is
    read back, by this client and another; unknown keys and models are NotFoundError; a key
    and value over one payload are refused with ENAMETOOLONG."""
    with daemon.client() as c, daemon.client() as d:
        c.meta_set("sd-tiny", "owner", "team-ü")
        assert c.meta_get("sd-tiny", "owner") == "team-ü"
        assert d.meta_get("sd-tiny", "owner") == "team-ü"
        c.meta_set("sd-tiny", "owner", "")
        assert c.meta_get("sd-tiny", "owner") == ""
        with pytest.raises(weightd.NotFoundError):
            c.meta_get("sd-tiny", "no-such-key")
        with pytest.raises(weightd.NotFoundError):
            c.meta_get("no-such-model", "owner")
        with pytest.raises(weightd.NotFoundError):
            c.meta_set("no-such-model", "owner", "x")
        with pytest.raises(weightd.WeightdError) as e:
            c.meta_set("sd-tiny", "k", "v" * 300)
        assert e.value.errno == errno.ENAMETOOLONG, e.value
        # 250 bytes fit in one payload with the key; read back, the reply carries 256.
        c.meta_set("sd-tiny", "k", "v" * 250)
        assert c.meta_get("sd-tiny", "k") == "v" * 250


def test_deprecated_names_warn(daemon):
    """The names docs/names.md retired still work, each with a DeprecationWarning that names
    its replacement: Client.status() is state(), Client.cache_stats() is host_stats()."""
    with daemon.client() as c:
        with pytest.warns(DeprecationWarning, match=r"Client\.state\(\)"):
            st = c.status("sd-tiny")
        assert st == c.state("sd-tiny"), st
        with pytest.warns(DeprecationWarning, match=r"Client\.state\(\)"):
            with pytest.raises(weightd.NotFoundError):
                c.status("no-such-model")
        with pytest.warns(DeprecationWarning, match=r"Client\.host_stats\(\)"):
            cs = c.cache_stats()
        assert set(cs) == set(c.host_stats()), cs
        # The new names warn about nothing.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            c.state("sd-tiny", "unet", tier="host")
            c.host_stats()


# One row per error case: the call, the exception class, words the message must contain.
ERRORS = [
    ("load unknown model", lambda c: c.load("no-such-model"), weightd.NotFoundError,
     "no-such-model"),
    ("pin unknown model", lambda c: c.pin("no-such-model"), weightd.NotFoundError,
     "no-such-model"),
    ("pin unknown component", lambda c: c.pin("sd-tiny", "nope"), weightd.NotFoundError,
     "nope"),
    ("state unknown model", lambda c: c.state("no-such-model"), weightd.NotFoundError,
     "no-such-model"),
    ("tensor unknown", lambda c: c.tensor_meta("sd-tiny", "nope.weight"),
     weightd.NotFoundError, ""),
    ("bad tier", lambda c: c.pin("sd-tiny", tier="tpu:0"), ValueError, "tpu:0"),
    ("gpu tier view", lambda c: c.pin("sd-tiny", tier="cuda:0").tensor("conv_in.weight"),
     weightd.GPUTierUnavailableError, "GPU tier"),
]


@pytest.mark.parametrize("case,call,exc,words", ERRORS, ids=[r[0] for r in ERRORS])
def test_errors(daemon, case, call, exc, words):
    with daemon.client() as c:
        with pytest.raises(exc) as ei:
            call(c)
        assert words in str(ei.value), "%s: %s" % (case, ei.value)
        if isinstance(ei.value, weightd.WeightdError):
            assert ei.value.errno > 0 and ei.value.message, (case, ei.value.__dict__)


def test_load_today_or_resident(daemon):
    """load() either succeeds (host-tier loader present) or says clearly why it cannot."""
    with daemon.client() as c:
        try:
            pin = c.load("vae-tiny")
        except weightd.NotSupportedError as e:
            assert "loader" in e.message, e.message
            assert e.code in ("ENOTSUP", "EOPNOTSUPP"), e.code
            return
        assert c.state("vae-tiny")["state"] == "resident"
        assert c.stats()["pins"] == 1
        pin.release()


def test_model_named_by_path(daemon, monkeypatch):
    """Every method that names a model takes its registry name or a path (absolute,
    relative to the working directory, of the model or of one of its files): a pin by path
    is the same lease as a pin by name."""
    tensor = "encoder.conv_in.weight"
    monkeypatch.chdir(daemon.models)
    spellings = [os.path.join(daemon.models, "vae-tiny.safetensors"), "./vae-tiny.safetensors",
                 os.path.join("sd-tiny", "..", "vae-tiny.safetensors")]
    with daemon.client() as c:
        want = c.tensor_meta("vae-tiny", tensor)
        for m in spellings:
            assert c.model(m).name == "vae-tiny", m
            assert c.tensor_meta(m, tensor).shape == want.shape, m
            with c.load(m) as pin:
                assert pin.model == "vae-tiny", (m, pin.model)
                assert pin.tensor(tensor).shape == want.shape, m
            assert c.state(m)["state"] == "resident", m
            p, q = c.pin(m), c.pin("vae-tiny")
            assert c.stats()["pins"] == 1, (m, c.stats())
            p.release()
            q.release()
            assert c.stats()["pins"] == 0, (m, c.stats())
            c.unload(m)
            assert c.state(m)["state"] == "absent", m
        unet = os.path.join("sd-tiny", "unet", "diffusion_pytorch_model.safetensors")
        with c.load(unet, component="unet") as pin:
            assert pin.model == "sd-tiny", pin.model
        with pytest.raises(weightd.NotFoundError):
            c.load("/no/such/model.safetensors")


def test_budget_exceeded(daemon_factory):
    d = daemon_factory(extra_args=("--host-budget", "64K"))
    with d.client() as c:
        assert c.stats()["host_budget"] == 65536
        try:
            c.load("sd-tiny")
        except weightd.BudgetExceededError as e:
            assert "sd-tiny" in e.message or "budget" in e.message, e.message
            return
        except weightd.NotSupportedError as e:
            pytest.skip("the daemon cannot load to the host tier yet (%s): admission is not "
                        "reached" % e.message)
        pytest.fail("sd-tiny (%d bytes) loaded under a 64 KiB host budget"
                    % c.model("sd-tiny").nbytes)


def pins_total(d):
    with d.client() as c:
        return c.stats()["pins_total"]


def test_pins_shared_and_released(daemon):
    """Pins of one target share one daemon pin; the last release drops it; release twice is
    fine; a released pin gives no views."""
    c = daemon.client()
    p1 = c.pin("sd-tiny", "unet")
    p2 = c.pin("sd-tiny", "unet")
    p3 = c.pin("llama-tiny")
    assert c.stats()["pins"] == 2, c.stats()
    p1.release()
    assert c.stats()["pins"] == 2, "one of two Pins released: the daemon pin must stay"
    p2.release()
    p2.release()
    assert c.stats()["pins"] == 1, c.stats()
    with pytest.raises(weightd.ReleasedError):
        p1.tensor("conv_in.weight")
    with p3:
        pass
    assert p3.released and c.stats()["pins"] == 0, c.stats()
    c.close()
    with pytest.raises(weightd.ReleasedError):
        c.stats()


def test_gc_releases_pins(daemon):
    """Dropping a Pin, or the Client with its pins, releases them at the daemon."""
    c = daemon.client()
    p = c.pin("sd-tiny")
    c.pin("vae-tiny")           # never bound: collected at once
    assert pins_total(daemon) == 1, "the unbound pin was not released by collection"
    del p
    gc.collect()
    assert pins_total(daemon) == 0
    p = c.pin("sd-tiny")
    q = c.pin("llama-tiny")
    assert pins_total(daemon) == 2
    del c, p, q
    gc.collect()
    wait_for(lambda: pins_total(daemon) == 0, what="pins of a collected client to go")


def test_killed_process_releases_pins(daemon):
    """A process that pinned and was killed with SIGKILL holds nothing afterwards."""
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, %r)
        import weightd
        c = weightd.connect(%r)
        pins = [c.pin("sd-tiny"), c.pin("llama-tiny", tier="host")]
        print("pinned", c.stats()["pins"], flush=True)
        time.sleep(60)
    """ % (os.path.join(ROOT, "bindings", "python"), daemon.socket))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "pinned 2", line
        assert pins_total(daemon) == 2
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        wait_for(lambda: pins_total(daemon) == 0, what="a killed client's pins to go")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_finalizer_during_progress_is_deferred(daemon):
    """A Pin collected while its client is inside a call (here: a progress callback, which
    holds the handle) is unpinned when the call ends, not deadlocked."""
    c = daemon.client()
    holder = [c.pin("llama-tiny")]
    seen = []

    def progress(done, total):
        if holder:
            holder.pop()  # the Pin's last reference: its finalizer runs here
            gc.collect()
            seen.append(c._pending[:])

    try:
        c.load("vae-tiny", progress=progress, pin=False)
    except weightd.NotSupportedError:
        # No progress without a loader: exercise the same path from a second thread that
        # holds the client while the Pin dies.
        c._lock.acquire()
        try:
            holder.pop()
            gc.collect()
            seen.append(c._pending[:])
        finally:
            c._lock.release()
        c.ping()  # the next call drains the deferred unpin
    assert seen and seen[0] == [("llama-tiny", "", 0)], seen
    assert c.stats()["pins"] == 0
    c.close()


def test_callback_reentry_is_refused(daemon):
    c = daemon.client()
    errs = []

    def progress(done, total):
        try:
            c.ping()
        except weightd.WeightdError as e:
            errs.append(e)

    try:
        c.load("vae-tiny", progress=progress, pin=False)
    except weightd.NotSupportedError:
        pytest.skip("no progress callbacks without the host-tier loader")
    assert errs and errs[0].errno == errno.EDEADLK, errs
    c.close()


def test_safe_open_daemon_model(daemon):
    """A file the daemon knows is matched to its component; it is served by the daemon when
    it can load, otherwise read directly with a warning naming the daemon's reason."""
    wsafe._reset_warning()
    path = os.path.join(daemon.models, "sd-tiny", "unet", "diffusion_pytorch_model.safetensors")
    c = wsafe.shared_client(daemon.socket)
    assert wsafe._find_component(c, weightd.stfile.STFile(path)) == ("sd-tiny", "unet")
    shard = os.path.join(daemon.models, "llama-tiny", "model-00002-of-00002.safetensors")
    assert wsafe._find_component(c, weightd.stfile.STFile(shard)) == ("llama-tiny", "")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        f = weightd.safe_open(path, socket=daemon.socket)
        t = f.get_tensor("conv_in.weight")
    if f.source == "file":
        assert "loader" in f.fallback_reason, f.fallback_reason
        assert len(rec) == 1 and "loader" in str(rec[0].message), [str(w.message) for w in rec]
    else:
        assert not rec, [str(w.message) for w in rec]
    ref = weightd.stfile.STFile(path).array("conv_in.weight")
    assert t.tobytes() == ref.tobytes()
    other = os.path.join(tempfile.mkdtemp(), "x.safetensors")
    shutil.copy(os.path.join(daemon.models, "vae-tiny.safetensors"), other)
    # Same content elsewhere: it is vae-tiny's component by fingerprint, so it is matched.
    assert wsafe._find_component(c, weightd.stfile.STFile(other)) is not None
    wsafe._reset_warning()
