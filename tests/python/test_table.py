"""The bulk path of Pin.tensors() (one weightd_tensor_table() call, one read-only mapping per
dtype, np.ndarray mapped over the columns) and how libweightd is loaded: the views are the
file's bytes, read-only, bounded by the mapping whatever the table says, and hold their pin;
the garbage collector's state is left as found; the library check reads only the ELF dynamic
section and prototypes are bound on first use."""

import ctypes
import errno
import gc
import os
import shutil
import subprocess

import numpy as np
import pytest

import weightd
from weightd import _native as N
from weightd import pin as wpin
from weightd import dtypes
from weightd.stfile import STFile

from test_views import model_files


def test_tensors_bulk_equals_the_file(loaded_daemon):
    """Pin.tensors() gives every tensor of each component, with the file's bytes, dtype and
    shape, read-only, and based on the pin's read-only mapping (which refuses close())."""
    d = loaded_daemon
    with d.client() as c:
        for model, comp, path in model_files(d):
            stf = STFile(path)
            raw = open(path, "rb").read()
            with c.load(model, component=comp) as pin:
                got = pin.tensors()
                assert set(got) == set(stf.entries), (model, comp, set(stf.entries) ^ set(got))
                for name, e in stf.entries.items():
                    arr = got[name]
                    want = raw[8 + stf.header_len + e.begin:8 + stf.header_len + e.end]
                    assert arr.tobytes() == want, (model, name)
                    assert weightd.tensor_dtype(arr) == e.dtype, (model, name)
                    assert arr.shape == dtypes.array_shape(e.dtype, e.shape), (model, name)
                    assert arr.dtype == dtypes.NUMPY[e.dtype], (model, name)
                    assert not arr.flags.writeable, (model, name)
                    with pytest.raises(ValueError):
                        arr.flags.writeable = True
                    with pytest.raises(BufferError):
                        arr.base.close()
                assert pin.live_views() == len(got)
                del got, arr
                gc.collect()


def test_table_grows_to_fit(loaded_daemon):
    """Room for 2 records and 8 name bytes: the library says how much is needed (ENOBUFS)
    and the binding asks again with that much."""
    with loaded_daemon.client() as c:
        c._list_cap, c._names_cap = 2, 8
        with c.load("sd-tiny", component="unet") as pin:
            n = len(pin.tensors())
        want = len(STFile(model_files(loaded_daemon)[1][2]).entries)
        assert n == want and c._list_cap >= want and c._names_cap > 8, (n, want, c._list_cap)


# A forged table (what a hostile registry could make the binding believe, were the library's
# checks gone): every row must raise, never hand out a view of bytes outside the mapping.
FORGED = [
    ("offset past the extent", lambda t: dict(offs=[t.size] * len(t.keys))),
    ("shape larger than the extent", lambda t: dict(shapes=[(t.size + 1,)] * len(t.keys))),
    ("extent past the end of the host cache", lambda t: dict(host_offset=1 << 50)),
    ("extent not page-aligned", lambda t: dict(host_offset=t.host_offset + 1)),
]


@pytest.mark.parametrize("case,change", FORGED, ids=[r[0] for r in FORGED])
def test_forged_table_cannot_reach_outside(loaded_daemon, case, change):
    with loaded_daemon.client() as c:
        pin = c.load("vae-tiny")
        good = pin._current_table()
        fields = dict(host_fd=good.host_fd, host_offset=good.host_offset, size=good.size,
                      keys=good.keys, dtnames=good.dtnames,
                      npdts=[np.dtype(np.uint8)] * len(good.keys), shapes=good.shapes,
                      offs=good.offs)
        fields.update(change(good))
        pin._table = wpin._Table(good.epoch, fields["host_fd"], fields["host_offset"],
                                    fields["size"], (fields["keys"], fields["dtnames"],
                                                     fields["npdts"], fields["shapes"],
                                                     fields["offs"]))
        with pytest.raises((TypeError, ValueError, weightd.WeightdError)):
            pin.tensors()
        gc.collect()  # the traceback's frames held the mapping
        assert pin.live_views() == 0, case
        pin._table = None
        pin.release()


def test_one_tuple_per_distinct_shape(loaded_daemon):
    """The table holds one tuple object per distinct shape (pin._Shapes), equal to the
    file's shape (the byte shape for sub-byte dtypes): a thousand tensors of a few shapes
    leave a few objects for the garbage collector, not a thousand."""
    d = loaded_daemon
    with d.client() as c:
        for model, comp, path in model_files(d):
            stf = STFile(path)
            with c.load(model, component=comp) as pin:
                tab = pin._current_table()
                assert len(tab.keys) == len(stf.entries), (model, comp)
                for k, sh, dt in zip(tab.keys, tab.shapes, tab.dtnames):
                    assert sh == dtypes.array_shape(dt, stf.entries[k].shape), (model, k, sh)
                    assert type(sh) is tuple, (model, k, type(sh))
                objs = {id(sh) for sh in tab.shapes}
                assert len(objs) == len(set(tab.shapes)), (model, comp, len(objs),
                                                           len(set(tab.shapes)))
                pin._table = None


@pytest.mark.parametrize("enabled", [True, False])
def test_gc_state_is_left_as_found(loaded_daemon, enabled):
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with loaded_daemon.client() as c:
            with c.load("vae-tiny") as pin:
                assert pin.tensors()
                assert gc.isenabled() == enabled
                gc.collect()
    finally:
        (gc.enable if was else gc.disable)()


# ---- loading libweightd ----------------------------------------------------------------

FAKE_LIB = """
const char *weightd_last_error(void) { return "fake"; }
int weightd_attach(const char *p, const void *o, void **h) { (void)p; (void)o; *h = 0;
                                                             return -111; }
%s
"""

# name, extra C source, cc flags, what _open() must say (None: it loads), the symbols that
# must read as absent (optional) or raise (required) on first use.
LIBS = [
    ("minimal", "", [], None),
    ("no attach", "", ["-DNO_ATTACH"], "lacks weightd_attach"),
    ("asan", "", ["-fsanitize=address"], "built with AddressSanitizer"),
]


def build_fake(tmp_path, name, extra, flags):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to build fake libraries")
    src = tmp_path / (name.replace(" ", "_") + ".c")
    code = FAKE_LIB % extra
    if "-DNO_ATTACH" in flags:
        code = code.replace("weightd_attach", "weightd_attach_not")
    src.write_text(code)
    out = tmp_path / ("lib" + name.replace(" ", "_") + ".so")
    r = subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)] + flags,
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip("cannot build a fake library with %s: %s" % (flags, r.stderr[-300:]))
    return str(out)


@pytest.mark.parametrize("name,extra,flags,refusal", LIBS, ids=[r[0] for r in LIBS])
def test_library_open(tmp_path, name, extra, flags, refusal):
    path = build_fake(tmp_path, name, extra, flags)
    assert N.asan_instrumented(path) == ("-fsanitize=address" in flags), path
    if "-fsanitize=address" in flags and N._asan_loaded():
        pytest.skip("this python runs with the ASan runtime: an instrumented library loads")
    lib, why = N._open(path)
    if refusal:
        assert lib is None and refusal in why, (name, why)
        return
    assert lib is not None, why
    # Optional functions the library lacks read as absent; a required one raises when used.
    assert getattr(lib, "weightd_tensor_table", None) is None
    assert getattr(lib, "weightd_tensor_data", None) is None
    with pytest.raises(weightd.LibraryUnavailableError) as ei:
        lib.weightd_ping
    assert "lacks weightd_ping" in str(ei.value)
    # A present function gets its prototype on first use.
    fn = lib.weightd_attach
    assert fn.restype is ctypes.c_int and len(fn.argtypes) == 3
    h = ctypes.c_void_p()
    assert fn(b"x", None, ctypes.byref(h)) == -errno.ECONNREFUSED


def test_library_open_missing(tmp_path):
    """A path with nothing there is refused with that reason (the open that reads the ELF
    header is also the existence check)."""
    for path in (str(tmp_path / "libweightd.so"), str(tmp_path / "no" / "libweightd.so")):
        lib, why = N._open(path)
        assert lib is None and why == "%s does not exist" % path, why


def test_asan_check_reads_the_dynamic_section():
    """The real libraries: the release build needs no ASan, the SAN build does (when
    built); the check parses DT_NEEDED rather than searching the file."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    rel = os.path.join(os.environ.get("WD_BUILD") or os.path.join(root, "build"),
                       "libweightd.so")
    if not os.path.exists(rel):
        pytest.skip("no libweightd.so at %s" % rel)
    fd = os.open(rel, os.O_RDONLY)
    try:
        needed = N._elf_needed(fd)
    finally:
        os.close(fd)
    assert needed is not None and b"libc.so.6" in needed, needed
    assert N.asan_instrumented(rel) == any(n.startswith(b"libasan.so") for n in needed)


@pytest.mark.parametrize("content,want", [(b"not an ELF file, mentions libasan.so", True),
                                          (b"\x7fELF but truncated", False),
                                          (b"plain text", False)])
def test_asan_check_of_other_files(tmp_path, content, want):
    p = tmp_path / "f.so"
    p.write_bytes(content)
    assert N.asan_instrumented(str(p)) == want
