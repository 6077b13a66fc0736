"""weightd's safetensors surface against the real safetensors package, in the same process.

For every file of the reference corpus and a generated set (each dtype the package knows,
scalars and empty tensors, metadata, Unicode and long names, a sharded checkpoint, files the
package itself wrote), weightd.safe_open / load_file / load must give what
safetensors.safe_open / load_file / load give, for framework "np" and "pt": keys,
offset_keys(), metadata(), dtypes, shapes, bytes, and get_slice() (get_shape, get_dtype, and
a table of indices: ints, slices, steps, negative and out-of-range bounds), case by case,
including which cases raise and with what class (weightd's SafetensorError is an instance of
the package's). Both with no daemon (the file path) and through a daemon that serves every
file. Nothing is compared with recorded values: each case runs through both, here.

tests/run.sh runs this file twice: with the newest safetensors release of
scripts/python/test.txt, and with the older pinned one (scripts/python/safetensors-old.txt,
put first on sys.path through WD_SAFETENSORS_PATH). Deliberate differences, each checked:
  * framework "np" and the dtypes numpy has no type for (BF16, F8_*, F4, F6_*): the package
    raises, weightd gives the raw bytes (uint16 / uint8) -- checked against the file's bytes;
  * dtypes the package does not know (F8_E4M3FNUZ and F8_E5M2FNUZ before 0.8): it refuses
    the file, weightd reads it;
  * framework "np" slicing before 0.8 ignored steps, refused `...`, ignored indices past the
    rank and raised TypeError for other index types; weightd follows 0.8, so those cases are
    compared only against 0.8 and later.
"""

import json
import os
import shutil
import struct
import warnings

import numpy as np
import pytest

import weightd
from weightd import dtypes as wdt
from weightd import numpy as wnumpy
from weightd import safe as wsafe
from weightd import torch as wtorch

from conftest import CORPUS, Daemon, file_range, need, wait_for

safetensors = need("safetensors")
torch = need("torch")
import safetensors.numpy  # noqa: E402
import safetensors.torch  # noqa: E402

ST_VERSION = tuple(int(x) for x in safetensors.__version__.split(".")[:2])
NO_SOCKET = "/nonexistent/weightd-compat.sock"
RNG = np.random.default_rng(16)

E = Ellipsis
# The get_slice table: every row runs on every tensor of every file (rank 0 to 4).
INDEXES = [0, 1, -1, 2, -2, 3, 4, -4, -5, 100, -100, True, np.int64(1),
           slice(None), slice(1, 3), slice(0, 1), slice(2, 2), slice(3, 1), slice(0, 100),
           slice(-2, None), slice(None, -1), slice(-100, 2), slice(None, None, 2),
           slice(1, None, 3), slice(0, 5, 4), slice(None, None, -1), slice(None, None, 0),
           (0, 1), (0, -1), (1, -1, 0), (0, -1, 2), (slice(1, 3), 2), (slice(None), slice(1, 2)),
           (slice(None, None, 2), slice(None, None, 3)), (E, 1), (1, E), (E, -1), (E,), E,
           (E, E), (1, E, slice(0, 2)), (0, 0, 0, 0, 0), (slice(None),) * 5, None, (None, 0),
           "x", 1.5, [0, 1], []]


def _uses_08_slicing(index, rank):
    if isinstance(index, list):
        return True
    items = index if isinstance(index, tuple) else (index,)
    if any(it is E or not isinstance(it, (int, slice, np.integer)) for it in items):
        return True
    if any(isinstance(it, slice) and it.step not in (None, 1) for it in items):
        return True
    return len(items) > rank


# ---- files ----

def _write(path, tensors, metadata=None):
    """Writes a safetensors file by hand: tensors is [(name, dtype, shape, bytes)]."""
    hdr = {}
    if metadata is not None:
        hdr["__metadata__"] = metadata
    pos = 0
    for name, dt, shape, data in tensors:
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
    h = json.dumps(hdr, ensure_ascii=False).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors))


def _nbytes(dt, shape):
    n = 1
    for d in shape:
        n *= d
    return n * wdt.BITS[dt] // 8


def _rand(n):
    return RNG.integers(0, 256, n, dtype=np.uint8).tobytes()


def _generate(d):
    """The generated files, in directory @d. Returns their paths."""
    out = []
    shapes = [(), (0,), (6,), (4, 6), (3, 0, 2), (2, 3, 2, 4)]
    for dt in wdt.NAMES:
        ts = []
        for k, shape in enumerate(shapes):
            if wdt.BITS[dt] % 8 and _nbytes(dt, shape) * 8 != (
                    int(np.prod(shape)) * wdt.BITS[dt]):
                continue
            if wdt.BITS[dt] == 6 and int(np.prod(shape)) % 4:
                continue
            if wdt.BITS[dt] == 4 and int(np.prod(shape)) % 2:
                continue
            ts.append(("%s.r%d" % (dt.lower(), k), dt, shape, _rand(_nbytes(dt, shape))))
        p = os.path.join(d, "dtype_%s.safetensors" % dt)
        _write(p, ts)
        out.append(p)
    names = ["模型.层.0.权重", "emoji😀.weight", "quote\"back\\slash", "tab\tnew\nline",
             "x" * 300, "layers." + "long_" * 1000 + "end", "", " "]
    ts = [(n, "F32", (2, 3), _rand(24)) for n in names]
    p = os.path.join(d, "names.safetensors")
    _write(p, ts, metadata={"format": "pt", "ünïcode": "välue ✓", "long": "v" * 5000,
                            "empty": ""})
    out.append(p)
    p = os.path.join(d, "metadata_only.safetensors")
    _write(p, [], metadata={"format": "np"})
    out.append(p)
    # Written by the package itself (its header order, alignment, torch dtypes).
    sd = {"emb.weight": torch.randn(16, 8).to(torch.bfloat16),
          "scale": torch.tensor(2.5),
          "empty": torch.zeros(0, 4),
          "q.weight": torch.randn(8, 8).to(torch.float8_e4m3fn),
          "k.weight": torch.randn(8, 8).to(torch.float8_e5m2),
          "ids": torch.arange(10, dtype=torch.int64),
          "mask": torch.rand(3, 5) > 0.5,
          "f16": torch.randn(4, 4, 2).to(torch.float16)}
    p = os.path.join(d, "torch_written.safetensors")
    safetensors.torch.save_file(sd, p, metadata={"format": "pt", "source": "weightd tests"})
    out.append(p)
    p = os.path.join(d, "numpy_written.safetensors")
    safetensors.numpy.save_file({"a": np.arange(24, dtype=np.float64).reshape(2, 3, 4),
                                 "b": np.array([1, -2, 3], dtype=np.int8),
                                 "c": np.zeros((5, 0), dtype=np.float32)}, p)
    out.append(p)
    # A sharded checkpoint: two shards and their HF index.
    shard_dir = os.path.join(d, "sharded")
    os.makedirs(shard_dir)
    wm = {}
    for i in range(2):
        name = "model-%05d-of-00002.safetensors" % (i + 1)
        sdi = {"layers.%d.%s" % (i * 2 + j, w): torch.randn(8, 4)
               for j in range(2) for w in ("q", "v")}
        safetensors.torch.save_file(sdi, os.path.join(shard_dir, name),
                                    metadata={"format": "pt"})
        wm.update({k: name for k in sdi})
        out.append(os.path.join(shard_dir, name))
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("stcompat"))
    paths = _generate(d)
    if os.path.isdir(CORPUS):
        for n in sorted(os.listdir(CORPUS)):
            if n.endswith(".safetensors"):
                shutil.copy(os.path.join(CORPUS, n), d)
                paths.append(os.path.join(d, n))
    return d, paths


@pytest.fixture(scope="module")
def daemon_socket(files, lib, tmp_path_factory):
    """A daemon whose model root holds every file of the set."""
    root = str(tmp_path_factory.mktemp("stcompat-daemon"))
    d = Daemon(root, files[0])
    d.start([])
    # One model per top-level file, one for the sharded folder.
    want = sum(1 for p in files[1] if os.path.dirname(p) == files[0]) + 1
    try:
        def published():
            with d.client() as c:
                return len(c.models()) >= want
        wait_for(published, 30, "%d models published:\n%s" % (want, d.tail()))
        if not weightd._native.has_tensor_data():
            pytest.skip("libweightd has no weightd_tensor_data(): no host-cache mapping")
        yield d.socket
    finally:
        d.stop()


# ---- comparison ----

def _outcome(fn):
    try:
        return True, fn()
    except Exception as e:  # noqa: BLE001 -- every exception is an outcome to compare
        return False, e


def _as_bytes(v):
    if isinstance(v, np.ndarray):
        return np.ascontiguousarray(v).tobytes()
    # A fresh tensor has the standard strides (contiguous() keeps a size-1 axis's stride).
    t = torch.empty(tuple(v.shape), dtype=v.dtype).copy_(v.detach()).reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _describe(v):
    return "%s %s %s" % (type(v).__name__, v.dtype, tuple(v.shape))


def _same(where, real, ours, raw_ok=None):
    """Asserts that @ours matches @real (each an _outcome). @raw_ok: the file bytes weightd
    must give where the package raises for want of a numpy type."""
    rok, rv = real
    ook, ov = ours
    if not rok:
        if raw_ok is not None and isinstance(rv, (TypeError, AttributeError,
                                                  safetensors.SafetensorError)):
            assert ook, "%s: the package raised %r; weightd must give the raw bytes, raised %r" \
                % (where, rv, ov)
            assert _as_bytes(ov) == raw_ok, "%s: raw bytes differ" % where
            return
        assert not ook, "%s: the package raised %s(%s), weightd returned %s" % (
            where, type(rv).__name__, rv, _describe(ov))
        assert isinstance(ov, type(rv)), "%s: the package raised %s(%s), weightd %s(%s)" % (
            where, type(rv).__name__, rv, type(ov).__mro__, ov)
        return
    assert ook, "%s: the package returned %s, weightd raised %s: %s" % (
        where, _describe(rv), type(ov).__name__, ov)
    assert type(ov) is type(rv), "%s: %s vs %s" % (where, type(ov), type(rv))
    assert ov.dtype == rv.dtype, "%s: dtype %s, the package %s" % (where, ov.dtype, rv.dtype)
    assert tuple(ov.shape) == tuple(rv.shape), "%s: shape %s, the package %s" % (
        where, tuple(ov.shape), tuple(rv.shape))
    assert _as_bytes(ov) == _as_bytes(rv), "%s: bytes differ" % where


def _open_real(path, fw):
    return safetensors.safe_open(path, framework=fw)


def _compare_file(path, fw, socket, want_source):
    where = "%s [%s]" % (os.path.basename(path), fw)
    rok, real = _outcome(lambda: _open_real(path, fw))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        ook, ours = _outcome(lambda: weightd.safe_open(path, framework=fw, socket=socket))
    if not rok:
        # Only a dtype the package does not know may make it refuse a file weightd reads.
        assert ook, "%s: both refuse: %r / %r" % (where, real, ours)
        assert "FNUZ" in path or "dtype" in str(real).lower() or "JSON" in str(real), \
            "%s: the package refused (%s), weightd opened it" % (where, real)
        return 0
    assert ook, "%s: the package opened it, weightd raised %r" % (where, ours)
    assert ours.source == want_source, "%s: source %s (%s)" % (where, ours.source,
                                                                ours.fallback_reason)
    assert ours.keys() == real.keys(), where
    assert ours.offset_keys() == real.offset_keys(), where
    assert ours.metadata() == real.metadata(), where
    n = 0
    for k in real.keys():
        dt = real.get_slice(k).get_dtype()
        raw = file_range(path, k) if fw == "np" and dt in wdt.RAW else None
        _same("%s get_tensor(%r)" % (where, k[:40]), _outcome(lambda: real.get_tensor(k)),
              _outcome(lambda: ours.get_tensor(k)), raw)
        rs, osl = real.get_slice(k), ours.get_slice(k)
        assert osl.get_shape() == rs.get_shape(), (where, k)
        assert osl.get_dtype() == rs.get_dtype(), (where, k)
        if raw is not None:
            continue
        rank = len(rs.get_shape())
        for idx in INDEXES:
            if fw == "np" and ST_VERSION < (0, 8) and _uses_08_slicing(idx, rank):
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _same("%s get_slice(%r)[%r]" % (where, k[:40], idx),
                      _outcome(lambda: rs[idx]), _outcome(lambda: osl[idx]))
            n += 1
    return n


@pytest.mark.parametrize("fw", ["np", "pt"])
def test_safe_open_file_path(files, fw):
    """No daemon: weightd reads the files itself, and matches the package everywhere."""
    n = sum(_compare_file(p, fw, NO_SOCKET, "file") for p in files[1])
    assert n > 1000, n


@pytest.mark.parametrize("fw", ["np", "pt"])
def test_safe_open_daemon(files, daemon_socket, fw):
    """Through a daemon that serves every file: the same answers."""
    n = sum(_compare_file(p, fw, daemon_socket, "daemon") for p in files[1]
            if "FNUZ" not in p or ST_VERSION >= (0, 8))
    assert n > 1000, n


def _compare_dicts(where, real, ours, path, fw):
    rok, rv = real
    ook, ov = ours
    if not rok and not ook:
        assert isinstance(ov, type(rv)), "%s: %r / %r" % (where, rv, ov)
        return
    if not rok:
        # The package has no type for a dtype (numpy's, or its torch.load() table lacks
        # F8_E8M0): weightd gives each tensor, with the file's bytes.
        assert ook and (fw == "np" or isinstance(rv, KeyError)), "%s: %r / %r" % (where, rv, ov)
        for k, v in ov.items():
            assert _as_bytes(v) == file_range(path, k), (where, k)
        return
    assert ook, "%s: weightd raised %r" % (where, ov)
    # The package's load(bytes) gives its dict in hash order: the keys are compared as sets.
    assert (list(ov) if "load_file" in where else sorted(ov)) == \
        (list(rv) if "load_file" in where else sorted(rv)), where
    for k in rv:
        _same("%s[%r]" % (where, k[:40]), (True, rv[k]), (True, ov[k]))


@pytest.mark.parametrize("fw", ["np", "pt"])
def test_load_file_and_load(files, fw):
    """load_file(path) and load(bytes) of each module give what the package's give."""
    real_mod = safetensors.numpy if fw == "np" else safetensors.torch
    ours_mod = wnumpy if fw == "np" else wtorch
    for path in files[1]:
        if "FNUZ" in path and ST_VERSION < (0, 8):
            continue
        where = "%s [%s]" % (os.path.basename(path), fw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
            _compare_dicts(where + " load_file", _outcome(lambda: real_mod.load_file(path)),
                           _outcome(lambda: ours_mod.load_file(path, socket=NO_SOCKET)),
                           path, fw)
        with open(path, "rb") as f:
            data = f.read()
        _compare_dicts(where + " load", _outcome(lambda: real_mod.load(data)),
                       _outcome(lambda: ours_mod.load(data)), path, fw)


def _st_bytes(hdr, data=b"", raw=None, n=None):
    h = raw if raw is not None else json.dumps(hdr).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


def _ent(dt, shape, b, e):
    return {"dtype": dt, "shape": shape, "data_offsets": [b, e]}


# Corrupt files the package refuses: weightd must refuse them with an exception that is the
# package's SafetensorError (and weightd's MalformedFileError).
CORRUPT = [
    ("too_small", b"\x01\x00"),
    ("header_too_large", struct.pack("<Q", 100_000_001) + b"{}"),
    ("header_bounds", _st_bytes(None, raw=b"{}", n=50)),
    ("not_json", _st_bytes(None, raw=b'{"a": ')),
    ("not_object", _st_bytes(None, raw=b"[]")),
    ("bad_utf8", _st_bytes(None, raw=b'{"\xff": 1}')),
    ("dtype", _st_bytes({"a": _ent("U7", [1], 0, 1)}, b"x")),
    ("shape", _st_bytes({"a": _ent("U8", [-1], 0, 1)}, b"x")),
    ("offsets", _st_bytes({"a": _ent("U8", [1], 1, 0)}, b"x")),
    ("mismatch", _st_bytes({"a": _ent("F32", [2], 0, 4)}, b"xxxx")),
    ("gap", _st_bytes({"a": _ent("U8", [1], 0, 1), "b": _ent("U8", [1], 2, 3)}, b"xyz")),
    ("overlap", _st_bytes({"a": _ent("U8", [2], 0, 2), "b": _ent("U8", [2], 1, 3)}, b"xyz")),
    ("truncated", _st_bytes({"a": _ent("U8", [4], 0, 4)}, b"xy")),
    ("metadata", _st_bytes({"__metadata__": {"k": 1}})),
    ("entry", _st_bytes({"a": {"dtype": "U8", "shape": [1]}}, b"x")),
]


@pytest.mark.parametrize("case,data", CORRUPT, ids=[c[0] for c in CORRUPT])
def test_corrupt_file_errors(tmp_path, case, data):
    path = str(tmp_path / (case + ".safetensors"))
    with open(path, "wb") as f:
        f.write(data)
    rok, rv = _outcome(lambda: safetensors.safe_open(path, framework="np"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        ook, ov = _outcome(lambda: weightd.safe_open(path, framework="np", socket=NO_SOCKET))
        lok, lv = _outcome(lambda: weightd.load_file(path, socket=NO_SOCKET))
    bok, bv = _outcome(lambda: weightd.load(data))
    assert not ook and not lok and not bok, (case, ov, lv, bv)
    for e in (ov, lv, bv):
        assert isinstance(e, weightd.SafetensorError), (case, type(e).__mro__, e)
        assert isinstance(e, weightd.MalformedFileError), (case, type(e).__mro__, e)
        if not rok:
            assert isinstance(e, type(rv)), (case, type(rv), type(e).__mro__)
        assert isinstance(e, safetensors.SafetensorError), (case, type(e).__mro__)


def test_missing_file_and_tensor(tmp_path, files):
    path = str(tmp_path / "missing.safetensors")
    for opener in (lambda: safetensors.safe_open(path, framework="np"),
                   lambda: weightd.safe_open(path, framework="np", socket=NO_SOCKET),
                   lambda: weightd.load_file(path, socket=NO_SOCKET),
                   lambda: wtorch.load_file(path, socket=NO_SOCKET)):
        with pytest.raises(FileNotFoundError):
            opener()
    with pytest.raises(weightd.NotFoundError):
        weightd.safe_open(path, socket=NO_SOCKET)
    p = [x for x in files[1] if x.endswith("numpy_written.safetensors")][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", weightd.WeightdFallbackWarning)
        ours = weightd.safe_open(p, framework="np", socket=NO_SOCKET)
    real = safetensors.safe_open(p, framework="np")
    for fn in ("get_tensor", "get_slice"):
        _same(fn, _outcome(lambda: getattr(real, fn)("nope")),
              _outcome(lambda: getattr(ours, fn)("nope")))
