"""The file path of the binding: the pure-Python safetensors reader, safe_open()/load_file()
without a daemon (one warning), slicing, read-only views, and malformed files."""

import json
import os
import struct
import warnings

import numpy as np
import pytest

import weightd
from weightd import safe as wsafe
from weightd.stfile import STFile

from conftest import corpus_listing, fnv1a64

CORPUS_FILES = ["all_dtypes", "scalars_and_empty", "metadata_rich", "transformer_block",
                "large_4MiB"]
NO_SOCKET = "/nonexistent/weightd-test.sock"


def file_bytes(path, stf, name):
    e = stf.entries[name]
    with open(path, "rb") as f:
        f.seek(8 + stf.header_len + e.begin)
        return f.read(e.nbytes)


@pytest.fixture(autouse=True)
def _fresh_warning():
    wsafe._reset_warning()
    yield
    wsafe._reset_warning()


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_corpus_bytes_equal_reference(corpus, name):
    """Every tensor read through safe_open (file path) has the reference's dtype, shape, size
    and bytes (FNV-1a of the reference for small tensors, the file's bytes for all)."""
    path = os.path.join(corpus, name + ".safetensors")
    stf = STFile(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(path, socket=NO_SOCKET)
    assert f.source == "file", f.fallback_reason
    listing = corpus_listing(name)
    assert f.keys() == [row[0] for row in listing]
    for t, dt, shape, nb, h in listing:
        arr = f.get_tensor(t)
        got = arr.tobytes()
        assert weightd.tensor_dtype(arr) == dt, (t, weightd.tensor_dtype(arr), dt)
        assert f.get_slice(t).get_dtype() == dt
        assert f.get_slice(t).get_shape() == list(shape)
        assert len(got) == nb, (t, len(got), nb)
        assert got == file_bytes(path, stf, t), t
        if nb <= 65536:
            assert fnv1a64(got) == h, "%s: fnv %016x, reference %016x" % (t, fnv1a64(got), h)
        if dt not in ("F6_E2M3", "F6_E3M2", "F4"):
            assert arr.shape == shape, (t, arr.shape, shape)
        # Writable like the package's arrays, but copy-on-write: the file never changes.
        assert arr.flags.writeable, t
        if arr.size:
            arr.reshape(-1)[:1] = 0
            again = weightd.safe_open(path, socket=NO_SOCKET).get_tensor(t)
            assert again.tobytes() == file_bytes(path, stf, t), t
            assert file_bytes(path, stf, t) == got, t


def test_raw_dtypes_are_unsigned_views(corpus):
    path = os.path.join(corpus, "all_dtypes.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(path, socket=NO_SOCKET)
    cases = [("t_bf16", np.uint16, "BF16"), ("t_f8_e4m3", np.uint8, "F8_E4M3"),
             ("t_f8_e5m2", np.uint8, "F8_E5M2"), ("t_f16", np.float16, "F16")]
    for t, npdt, st in cases:
        arr = f.get_tensor(t)
        assert arr.dtype == npdt, (t, arr.dtype)
        assert weightd.tensor_dtype(arr[..., :1]) == st, t
    with pytest.raises(ValueError):
        weightd.tensor_dtype(f.get_tensor("t_f16") + 1)


def test_metadata_and_load_file(corpus):
    path = os.path.join(corpus, "metadata_rich.safetensors")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(path, socket=NO_SOCKET)
        d = weightd.load_file(path, socket=NO_SOCKET)
    assert f.metadata() == header.get("__metadata__"), (f.metadata(), header)
    assert sorted(d) == f.keys()
    for k, v in d.items():
        assert v.tobytes() == f.get_tensor(k).tobytes(), k


def test_no_daemon_warns_once(corpus):
    """Without a daemon, safe_open falls back with exactly one warning that says why."""
    path = os.path.join(corpus, "all_dtypes.safetensors")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        f1 = weightd.safe_open(path, socket=NO_SOCKET)
        f2 = weightd.safe_open(path, socket=NO_SOCKET)
        weightd.load_file(path, socket=NO_SOCKET)
    ours = [w for w in rec if issubclass(w.category, weightd.WeightdFallbackWarning)]
    assert len(ours) == 1, [str(w.message) for w in rec]
    msg = str(ours[0].message)
    assert "no daemon" in msg or "libweightd" in msg, msg
    assert f1.source == f2.source == "file"
    assert f1.fallback_reason


def test_connect_without_daemon_raises(lib):
    with pytest.raises(weightd.DaemonUnavailableError) as ei:
        weightd.connect(NO_SOCKET)
    assert NO_SOCKET in str(ei.value) or ei.value.code in ("ENOENT", "ECONNREFUSED"), \
        str(ei.value)


SLICES = [
    ("t_f64", np.s_[1:4]),
    ("t_f64", np.s_[:, 1]),
    ("t_f64", np.s_[4:, :2]),
    ("t_f64", np.s_[...]),
    ("t_f64", np.s_[..., 2]),
    ("t_f64", np.s_[3]),
    ("t_f64", np.s_[2:2]),
    ("t_i64", np.s_[0, 3:]),
    ("t_u8", np.s_[:, 1:5]),
]


@pytest.mark.parametrize("name,index", SLICES)
def test_get_slice_matches_numpy(corpus, name, index):
    path = os.path.join(corpus, "all_dtypes.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(path, socket=NO_SOCKET)
    full = np.array(f.get_tensor(name))
    got = f.get_slice(name)[index]
    want = full[index]
    assert got.shape == want.shape, (name, index, got.shape, want.shape)
    assert np.array_equal(got, want), (name, index)


BAD_SLICES = [
    ("t_f64", np.s_[::-1], "step"),
    ("t_f64", np.s_[0, 0, 0], "more slicing indexes"),
    ("t_f64", np.s_[6], "out of bounds"),
    ("t_f64", np.s_[..., ...], "ellipsis"),
    ("t_f64", np.s_["a"], "expected slice, int, or ellipsis"),
]


@pytest.mark.parametrize("name,index,why", BAD_SLICES)
def test_get_slice_refuses(corpus, name, index, why):
    path = os.path.join(corpus, "all_dtypes.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(path, socket=NO_SOCKET)
    with pytest.raises(weightd.SafetensorError) as ei:
        f.get_slice(name)[index]
    assert why in str(ei.value), str(ei.value)


def test_views_outlive_handle(corpus):
    """Arrays keep the file mapping alive after close(); the handle's mapping is gone."""
    path = os.path.join(corpus, "transformer_block.safetensors")
    stf = STFile(path)
    name = next(iter(stf.entries))
    arr = stf.array(name)
    want = file_bytes(path, stf, name)
    assert stf.live_views() == 1
    stf.close()
    assert arr.tobytes() == want
    with pytest.raises(ValueError):
        arr.flags.writeable = True


def _st_bytes(header, data=b"", raw_header=None, n_override=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(h) if n_override is None else n_override
    return struct.pack("<Q", n) + h + data


def _entry(dt, shape, b, e):
    return {"dtype": dt, "shape": shape, "data_offsets": [b, e]}


# One row per rule: the file's bytes and the rule name the error must carry.
MALFORMED = [
    ("too_small", b"\x01\x00", "file_too_small"),
    ("header_too_large", struct.pack("<Q", 100_000_001) + b"{}", "header_too_large"),
    ("header_bounds", _st_bytes(None, raw_header=b"{}", n_override=50), "header_out_of_bounds"),
    ("not_brace", _st_bytes(None, raw_header=b"[]"), "header_not_object_start"),
    ("bad_utf8", _st_bytes(None, raw_header=b'{"\xff": 1}'), "invalid_utf8"),
    ("bad_json", _st_bytes(None, raw_header=b'{"a": '), "invalid_json"),
    ("duplicate", _st_bytes(None, raw_header=b'{"a": {"dtype": "U8", "shape": [1], '
                            b'"data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], '
                            b'"data_offsets": [1, 2]}}', data=b"xy"), "duplicate_key"),
    ("entry_field", _st_bytes({"a": {"dtype": "U8", "shape": [1]}}, b"x"), "invalid_entry"),
    ("dtype", _st_bytes({"a": _entry("U7", [1], 0, 1)}, b"x"), "invalid_dtype"),
    ("shape", _st_bytes({"a": _entry("U8", [-1], 0, 1)}, b"x"), "invalid_shape"),
    ("rank", _st_bytes({"a": _entry("U8", [1] * 17, 0, 1)}, b"x"), "rank_too_large"),
    ("offsets", _st_bytes({"a": _entry("U8", [1], 1, 0)}, b"x"), "invalid_offsets"),
    ("metadata", _st_bytes({"__metadata__": {"k": 1}}), "invalid_metadata"),
    ("partial", _st_bytes({"a": _entry("F4", [3], 0, 1)}, b"x"), "partial_byte"),
    ("mismatch", _st_bytes({"a": _entry("F32", [2], 0, 4)}, b"xxxx"), "size_mismatch"),
    ("not_at_zero", _st_bytes({"a": _entry("U8", [1], 1, 2)}, b"xx"), "data_not_at_zero"),
    ("gap", _st_bytes({"a": _entry("U8", [1], 0, 1), "b": _entry("U8", [1], 2, 3)}, b"xyz"),
     "data_gap"),
    ("overlap", _st_bytes({"a": _entry("U8", [2], 0, 2), "b": _entry("U8", [2], 1, 3)},
                          b"xyz"), "data_overlap"),
    ("trailing", _st_bytes({"a": _entry("U8", [1], 0, 1)}, b"xy"), "file_size_mismatch"),
]


@pytest.mark.parametrize("case,data,rule", MALFORMED, ids=[r[0] for r in MALFORMED])
def test_malformed_file(tmp_path, case, data, rule):
    """A malformed file raises MalformedFileError naming the file and the rule, through
    safe_open (which always reads the header itself)."""
    path = tmp_path / (case + ".safetensors")
    path.write_bytes(data)
    with pytest.raises(weightd.MalformedFileError) as ei:
        weightd.safe_open(str(path), socket=NO_SOCKET)
    msg = str(ei.value)
    assert rule in msg and str(path) in msg, msg
    assert ei.value.code == "EBADMSG", ei.value.code


def test_valid_edge_cases(tmp_path):
    """Zero-size tensors, rank-0 scalars, padded headers, unaligned offsets are valid."""
    hdr = {"s": _entry("F64", [], 0, 8), "z": _entry("F32", [0, 4], 8, 8),
           "u": _entry("I16", [3], 8, 14), "__metadata__": {"k": "v"}}
    h = json.dumps(hdr).encode() + b"   "
    data = struct.pack("<d", 1.5) + struct.pack("<3h", -1, 2, -3)
    path = tmp_path / "edge.safetensors"
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        f = weightd.safe_open(str(path), socket=NO_SOCKET)
    assert f.get_tensor("s").shape == () and float(f.get_tensor("s")) == 1.5
    assert f.get_tensor("z").shape == (0, 4)
    assert f.get_tensor("u").tolist() == [-1, 2, -3]
    assert f.metadata() == {"k": "v"}
    assert f.keys() == ["s", "u", "z"]


def test_missing_file(tmp_path):
    with pytest.raises(weightd.WeightdError) as ei:
        weightd.safe_open(str(tmp_path / "nope.safetensors"), socket=NO_SOCKET)
    assert ei.value.code == "ENOENT", str(ei.value)


def test_torch_framework_without_torch(corpus):
    """framework "pt" in a python without torch: get_tensor() says torch is needed. Run in a
    child whose `import torch` fails (the test environment has torch)."""
    path = os.path.join(corpus, "all_dtypes.safetensors")
    code = (
        "import sys, warnings; sys.modules['torch'] = None\n"
        "import weightd\n"
        "warnings.simplefilter('ignore', weightd.WeightdFallbackWarning)\n"
        "f = weightd.safe_open(%r, framework='pt', socket=%r)\n"
        "try:\n"
        "    f.get_tensor('t_f32')\n"
        "except weightd.NotSupportedError as e:\n"
        "    assert 'torch' in str(e), str(e)\n"
        "    print('refused:', e)\n"
        "else:\n"
        "    raise SystemExit('get_tensor() gave a tensor without torch')\n" % (path, NO_SOCKET))
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(weightd.__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and "refused:" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_not_a_regular_file(tmp_path, kind):
    """A FIFO (or a directory) where a model file was is refused at once with "not a regular
    file": opening a FIFO for reading would otherwise block until a writer came
    (docs/security.md). safe_open() goes through the same file path."""
    import signal

    path = tmp_path / "w.safetensors"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()

    def hung(signum, frame):
        raise AssertionError("opening a %s blocked" % kind)

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(weightd.WeightdError) as ei:
            STFile(path)
        assert "not a regular file" in str(ei.value)
        with pytest.raises(weightd.WeightdError):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with weightd.safe_open(str(path), socket=NO_SOCKET):
                    pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
