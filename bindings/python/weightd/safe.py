"""The safetensors-compatible surface: safe_open() and load_file() through the daemon.

`from weightd import safe_open` (or `from weightd.numpy import load_file`, `from
weightd.torch import load_file`) replaces the safetensors import of the same name.

How a path reaches the daemon: the file's header is read (it is needed anyway for keys() and
metadata()), and its XXH3-64 hash is combined the way the daemon fingerprints components
(core/daemon/publish.c: a single file, or every shard of an HF sharded index in name order). The
registry component with that fingerprint is the file (or the sharded checkpoint it belongs
to); the binding loads it to the host tier with a pin and serves read-only views of the shared
host cache. When that is impossible -- libweightd missing, no daemon, the file not under the
daemon's model roots, a daemon that cannot load to the host (no loader, budget) -- the file is
read directly (stfile.py) and one WeightdFallbackWarning says why, once per process. The
`source` attribute ("daemon" or "file") and `fallback_reason` tell which path a handle took.

With device="cuda:N" (framework "pt") the file is loaded to the daemon's GPU tier instead and
get_tensor() gives CUDA tensors through DLPack (weightd.device; no copy). A daemon without a
GPU tier serves it from the host tier, copied with .to(device) (`gpu_fallback_reason` says
why); without a daemon the file is read and copied the same way.

What it gives matches the safetensors package (tests/python/test_st_compat.py compares the
two in one process, for the pinned releases): keys, offset_keys(), metadata(), dtypes,
shapes and bytes; get_slice() indexing (numpy: the package's own rules, steps and one `...`;
torch: torch's indexing of the tensor, as the package does); the exceptions (a
SafetensorError that is also the package's SafetensorError when that is installed, and
FileNotFoundError for a missing file). Arrays and tensors are views of a private,
copy-on-write mapping of the shared cache (or of the file): no copy; they are writable like
the package's, and a write copies the touched page into this process only, so the cache and
the file never change. Deliberate difference: where the package raises because numpy has no
such type (BF16, F8, F4 and F6 in framework "np"), weightd gives the raw bytes (uint16 /
uint8; weightd.tensor_dtype() names the real dtype).
"""

import ctypes
import errno
import json
import operator
import os
import struct
import sys
import threading
import warnings

import numpy as np

from . import dtypes
from ._frameworks import _torch, to_framework
from .client import Client
from .errors import (DaemonUnavailableError, GPUTierUnavailableError, LibraryUnavailableError,
                     NotFoundError, WeightdError, WeightdFallbackWarning)
from .stfile import STFile, open_regular

__all__ = ["safe_open", "load_file", "load", "SafetensorError", "FRAMEWORKS"]

# The frameworks weightd serves; safetensors' others (tf, flax, mlx, paddle) are left to it.
FRAMEWORKS = ("np", "numpy", "pt", "pytorch", "torch")


class SafetensorError(WeightdError):
    """What safe_open(), load_file() and load() raise for a malformed file, a missing tensor or
    a refused index, like the safetensors package's SafetensorError. The instance raised is
    also of the package's class when safetensors is installed (_st_error()), so `except
    safetensors.SafetensorError` catches it, and of the weightd class it was (e.g.
    MalformedFileError), so `except weightd.MalformedFileError` does too."""


class SafetensorFileNotFoundError(NotFoundError, FileNotFoundError):
    """A missing file: FileNotFoundError, as the package raises, and a weightd NotFoundError."""

    def __init__(self, path):
        FileNotFoundError.__init__(self, errno.ENOENT, "No such file or directory", path)
        self.message = "%s: No such file or directory" % path
        self.code = "ENOENT"
        self.op = "open"

    def __str__(self):
        return "No such file or directory: %s" % self.filename


_compat_classes = {}


def _real_st_error():
    """The safetensors package's SafetensorError, or None when it is not installed."""
    mod = sys.modules.get("safetensors")
    if mod is None:
        try:
            import safetensors as mod
        except ImportError:
            return None
    return getattr(mod, "SafetensorError", None)


def _st_error(e):
    """@e (a WeightdError) as a SafetensorError of the same weightd class and, when safetensors
    is installed, of its SafetensorError; or @e itself when it already is one."""
    real = _real_st_error()
    if isinstance(e, SafetensorError) and (real is None or isinstance(e, real)):
        return e
    cls = type(e)
    key = (cls, real)
    compat = _compat_classes.get(key)
    if compat is None:
        if issubclass(cls, SafetensorError):
            bases = (cls,)
        elif cls is WeightdError:
            bases = (SafetensorError,)
        else:
            bases = (cls, SafetensorError)
        try:
            compat = type("SafetensorError", bases + ((real,) if real else ()), {})
        except TypeError:
            compat = type("SafetensorError", bases, {})
        compat.__module__ = __name__
        _compat_classes[key] = compat
    out = compat(e.errno, e.message, e.op)
    out.__cause__ = e.__cause__
    return out


def _raise_compat(e):
    if isinstance(e, FileNotFoundError):
        raise e
    raise _st_error(e) from None

# How many safe_open handles of this process each path served (diagnostics, and how the
# tests of weightd.patch() see that a program's loads went through the daemon).
opened = {"daemon": 0, "file": 0}

_clients = {}
_clients_lock = threading.Lock()
_warned = []


def _warn_once(reason):
    if _warned:
        return
    _warned.append(reason)
    warnings.warn("weightd: reading safetensors files directly, not through the daemon: "
                  + reason, WeightdFallbackWarning, stacklevel=3)


def _reset_warning():
    """For tests: the next fallback warns again."""
    del _warned[:]


def shared_client(socket=None):
    """The process-wide Client for @socket that safe_open() uses (connected on first use)."""
    key = os.fspath(socket) if socket is not None else os.environ.get("WEIGHTD_SOCKET", "")
    with _clients_lock:
        c = _clients.get(key)
        if c is None or c._closed:
            c = Client(socket)
            _clients[key] = c
        return c


def _drop_client(socket):
    key = os.fspath(socket) if socket is not None else os.environ.get("WEIGHTD_SOCKET", "")
    with _clients_lock:
        _clients.pop(key, None)


_xxh = []


def _xxhash():
    if not _xxh:
        try:
            lib = ctypes.CDLL("libxxhash.so.0")
            lib.XXH3_64bits.restype = ctypes.c_uint64
            lib.XXH3_64bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
            lib.XXH3_64bits_withSeed.restype = ctypes.c_uint64
            lib.XXH3_64bits_withSeed.argtypes = [ctypes.c_char_p, ctypes.c_size_t,
                                                 ctypes.c_uint64]
            _xxh.append(lib)
        except OSError:
            _xxh.append(None)
    return _xxh[0]


def _chain(hashes):
    """The daemon's component fingerprint over its files' header hashes (in order)."""
    x = _xxhash()
    h = 0
    for fh in hashes:
        h = x.XXH3_64bits_withSeed(struct.pack("<Q", fh), 8, h)
    return h


def _header_hash(header):
    return _xxhash().XXH3_64bits(header, len(header))


def _fingerprints(stf):
    """Candidate component fingerprints for @stf: as a single file, and as one shard of
    each HF index in its directory that names it."""
    out = [_chain([_header_hash(stf.header)])]
    d = os.path.dirname(os.path.abspath(stf.path))
    base = os.path.basename(stf.path)
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for idx in sorted(n for n in names if n.endswith(".index.json")):
        try:
            with open_regular(os.path.join(d, idx)) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if base not in shards:
            continue
        hs = []
        for s in shards:
            p = os.path.join(d, s)
            try:
                with open_regular(p) as f:
                    (n,) = struct.unpack("<Q", f.read(8))
                    if n > 100_000_000:
                        raise ValueError(p)
                    f.seek(0)
                    hs.append(_header_hash(f.read(8 + n)))
            except (OSError, ValueError, struct.error):
                hs = None
                break
        if hs:
            out.append(_chain(hs))
    return out


# The longest tensor name the registry holds (bytes: WEIGHTD_TENSOR_NAME_MAX - 1 of
# include/weightd.h); a file's longer or empty names are served from the file
# (safe_open._array()).
_REGISTRY_NAME_MAX = 65535


def _find_component(client, stf):
    """(model name, component name) of the registry component that is @stf, or None."""
    fps = _fingerprints(stf)
    names = set(stf.entries)
    for m in client.models():
        if m.stale:
            continue
        for c in m.components:
            if c.fingerprint not in fps:
                continue
            # The fingerprint covers headers; a tensor name check guards against a hash
            # collision before any view is handed out. The probe is a name the registry can
            # hold (1 to _REGISTRY_NAME_MAX bytes).
            probe = next((n for n in sorted(names) if 0 < len(n.encode()) <= _REGISTRY_NAME_MAX),
                         None)
            if probe is not None:
                try:
                    client.tensor_meta(m.name, probe, c.name or None)
                except WeightdError:
                    continue
            return m.name, c.name
    return None


def _is_cuda(device):
    if device is None:
        return False
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    s = str(device)
    return s.startswith("cuda")


def _cuda_tier(device):
    """The tier name "cuda:N" of a cuda @device (an int, "cuda", "cuda:N", torch.device)."""
    if isinstance(device, int) and not isinstance(device, bool):
        return "cuda:%d" % device
    s = str(device)
    return "cuda:0" if s == "cuda" else s


_gpu_warned = []


def _np_index(shape, index):
    """safetensors' numpy slicing rules (PySafeSlice.__getitem__ of the package, 0.8): the
    numpy index that selects what the package would give for @index on a tensor of @shape,
    or the exception it would raise, in its order. Each item is an int (anything with
    __index__), a slice with non-negative bounds and a positive step, or one `...`."""
    if isinstance(index, list):
        # A list is taken only whole and empty, as the range [0:0].
        if index:
            raise WeightdError(errno.EINVAL, "Non empty lists are not implemented", "get_slice")
        index = slice(0, 0)
    items = index if isinstance(index, tuple) else (index,)
    parsed = []
    for pos, it in enumerate(items):
        if it is Ellipsis:
            parsed.append(it)
        elif isinstance(it, slice):
            bounds = []
            for b in (it.start, it.stop):
                if b is not None:
                    b = operator.index(b)
                    if b < 0:
                        # The package converts bounds to usize: OverflowError, as it raises.
                        raise OverflowError("can't convert negative int to unsigned")
                bounds.append(b)
            step = 1 if it.step is None else operator.index(it.step)
            if step <= 0:
                raise WeightdError(errno.EINVAL, "Slice step must be a positive integer, got "
                                   "%d" % step, "get_slice")
            parsed.append(slice(bounds[0], bounds[1], step))
        elif hasattr(type(it), "__index__"):
            parsed.append(operator.index(it))
        else:
            raise WeightdError(errno.EINVAL, "Unsupported slice index at position %d: expected "
                               "slice, int, or ellipsis, got %s" % (pos, type(it).__name__),
                               "get_slice")
    n_ell = sum(1 for it in parsed if it is Ellipsis)
    if n_ell > 1:
        raise WeightdError(errno.EINVAL, "Only one ellipsis (...) is allowed in slice index",
                           "get_slice")
    rank = len(shape)
    if n_ell:
        k = parsed.index(Ellipsis)
        parsed[k:k + 1] = [slice(None, None, 1)] * max(0, rank - (len(parsed) - 1))
    for axis, it in enumerate(parsed):
        if isinstance(it, int) and it < 0:
            size = shape[axis] if axis < rank else 0
            if it < -size:
                raise WeightdError(errno.EINVAL, "Invalid index %d for dimension %d of size %d"
                                   % (it, axis, size), "get_slice")
            parsed[axis] = it + size

    def shown():
        def one(it):
            if isinstance(it, int):
                return str(it)
            txt = "%s:%s" % ("" if it.start is None else it.start,
                             "" if it.stop is None else it.stop)
            return txt + (":%d" % it.step if it.step != 1 else "")
        return "[%s]" % ", ".join(one(it) for it in parsed)
    if len(parsed) > rank:
        raise WeightdError(errno.EINVAL, "Error during slicing %s with shape %s: more slicing "
                           "indexes than dimensions in tensor" % (shown(), list(shape)),
                           "get_slice")
    lengths = list(shape)
    backwards = False
    for axis, it in enumerate(parsed):
        size = shape[axis]
        if isinstance(it, int):
            lengths[axis] = 1
            if it >= size:
                raise WeightdError(errno.EINVAL, "Error during slicing %s with shape %s: index "
                                   "%d out of bounds for tensor dimension #%d of size %d"
                                   % (shown(), list(shape), it, axis, size), "get_slice")
            continue
        start = 0 if it.start is None else it.start
        stop = size if it.stop is None else it.stop
        if start >= size:
            bad = start
        elif stop > size:
            bad = stop - 1
        else:
            bad = None
        if bad is not None:
            raise WeightdError(errno.EINVAL, "Error during slicing %s with shape %s: index %d "
                               "out of bounds for tensor dimension #%d of size %d"
                               % (shown(), list(shape), bad, axis, size), "get_slice")
        lengths[axis] = -(-(stop - start) // it.step)
        backwards = backwards or start > stop
    if backwards:
        # A start past the stop: the package computes a negative length. With any other
        # axis empty the byte count is 0 and numpy refuses the shape; otherwise CPython
        # refuses the byte count. Both are what it raises, so both are what this raises.
        if any(n == 0 for n in lengths):
            raise ValueError("Maximum allowed dimension exceeded")
        raise SystemError("Negative size passed to PyByteArray_FromStringAndSize")
    return tuple(parsed)


class _Slice:
    """safetensors' PySafeSlice: get_shape(), get_dtype(), and indexing. Framework "np"
    follows the package's own rules (_np_index: ints, slices with a positive step, one `...`);
    framework "pt" indexes the torch tensor, as the package does (torch's rules and errors).
    The result is a view of the handle's copy-on-write mapping: only the selected bytes are
    read."""

    def __init__(self, owner, name):
        self._owner = owner
        self._name = name
        self._dtype, self._shape = owner._describe(name)

    def get_shape(self):
        return list(self._shape)

    def get_dtype(self):
        return self._dtype

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of a rank-0 tensor")
        return self._shape[0]

    def __getitem__(self, index):
        try:
            return self._getitem(index)
        except WeightdError as e:
            _raise_compat(e)

    def _getitem(self, index):
        owner = self._owner
        if owner._framework == "pt":
            if self._dtype == "F4":
                # The package builds the sliced tensor with the shape in values, over half as
                # many bytes, and torch refuses it: every F4 slice raises this there.
                n = 1
                for d in self._shape:
                    n *= d
                if n:
                    raise RuntimeError("shape '%s' is invalid for input of size %d"
                                       % (list(self._shape), n // 2))
                torch = _torch()
                return torch.zeros(self._shape, dtype=torch.uint8).view(
                    torch.float4_e2m1fn_x2)[index]
            return owner._get(self._name, populate=False)[index]
        if self._dtype in dtypes.SUBBYTE:
            raise WeightdError(errno.EINVAL, "%s is %s, packed below one byte per element: "
                               "it cannot be sliced" % (self._name, self._dtype), "get_slice")
        idx = _np_index(self._shape, index)
        arr = owner._array(self._name)
        if not hasattr(arr, "ndim"):
            raise WeightdError(errno.EINVAL, "framework \"np\" holds arrays in host memory; "
                               "device %r needs framework \"pt\"" % (owner._device,),
                               "get_slice")
        # The trailing `...` keeps a 0-d result an array (numpy gives a scalar for ints
        # on every axis; the package gives a 0-d array).
        return arr[idx + (Ellipsis,)]


class safe_open:
    """safetensors.safe_open over the daemon (module comment).

    safe_open(filename, framework="np"|"pt", device="cpu"|"cuda:N", socket=None,
    backend="mmap") -- @backend is accepted for the package's signature; weightd always maps.
    Methods: keys(), offset_keys(), metadata(), get_tensor(name), get_tensors(),
    get_slice(name); attributes source, fallback_reason, tier ("host", or "cuda:N" when the
    daemon's GPU tier serves a CUDA device) and gpu_fallback_reason (why a CUDA device is
    served from the host tier and copied with .to(device): a daemon without a GPU tier). Use
    it as a context manager or call close(); arrays taken from it stay valid after either
    (they keep their pin or file mapping alive themselves).
    Raises FileNotFoundError for a missing file and SafetensorError (module comment) for a
    file that breaks the format or a tensor it does not hold.
    """

    def __init__(self, filename, framework="np", device="cpu", socket=None, *, backend="mmap"):
        if str(framework) not in FRAMEWORKS:
            raise _st_error(WeightdError(errno.EINVAL, "framework %r: use \"np\" or \"pt\""
                                         % (framework,), "safe_open"))
        self._framework = "np" if framework in ("np", "numpy") else "pt"
        self._device = device
        self._pin = None
        self._component = None
        try:
            self._file = STFile(filename)
        except WeightdError as e:
            if e.errno == errno.ENOENT and not isinstance(e, SafetensorError):
                raise SafetensorFileNotFoundError(os.fspath(filename)) from None
            _raise_compat(e)
        self.source = "file"
        self.fallback_reason = None
        self.tier = "host"
        self.gpu_fallback_reason = None
        reason = self._attach(socket)
        if reason is not None:
            self.fallback_reason = reason
            _warn_once(reason)
        else:
            self.source = "daemon"
        opened[self.source] += 1

    def _attach(self, socket):
        if _xxhash() is None:
            return "libxxhash.so.0 is missing: files cannot be matched to daemon models"
        try:
            client = shared_client(socket)
        except LibraryUnavailableError as e:
            return e.message
        except DaemonUnavailableError as e:
            return "no daemon: %s" % e.message
        except WeightdError as e:
            return "cannot attach: %s" % e
        try:
            found = _find_component(client, self._file)
            if found is None:
                return ("%s is not a model the daemon knows (not under its --models roots, or "
                        "changed since its last scan)" % self._file.path)
            model, comp = found
            if _is_cuda(self._device):
                tier = _cuda_tier(self._device)
                try:
                    self._pin = client.load(model, tier, component=comp or None)
                    self._component = (model, comp)
                    self.tier = tier
                    return None
                except GPUTierUnavailableError as e:
                    # Served from the host tier and copied with .to(device) instead.
                    self.gpu_fallback_reason = e.message
                    if not _gpu_warned:
                        _gpu_warned.append(e.message)
                        warnings.warn("weightd: %s is served from the host tier and copied "
                                      "to %s: %s" % (self._file.path, self._device, e.message),
                                      WeightdFallbackWarning, stacklevel=4)
            self._pin = client.load(model, "host", component=comp or None)
            self._component = (model, comp)
            return None
        except DaemonUnavailableError as e:
            _drop_client(socket)
            return "the daemon went away: %s" % e.message
        except WeightdError as e:
            return "the daemon cannot serve %s: %s" % (self._file.path, e)

    # ---- safetensors API ----

    def keys(self):
        """The tensor names, sorted."""
        return sorted(self._file.entries)

    def offset_keys(self):
        """The tensor names in the order of their data in the file."""
        return list(self._file.entries)

    def metadata(self):
        """The __metadata__ map (dict of str), or None when the file has none."""
        return dict(self._file.metadata) if self._file.metadata is not None else None

    def _describe(self, name):
        e = self._file.entries.get(name)
        if e is None:
            raise WeightdError(errno.ENOENT, "File does not contain tensor %s" % (name,),
                               "get_tensor")
        return e.dtype, e.shape

    def _array(self, name, populate=False):
        """The numpy view of @name: a private copy-on-write mapping of the shared cache (or
        of the file), its pages mapped now when @populate (one madvise, not page faults)."""
        if self.source == "daemon" and 0 < len(name.encode()) <= _REGISTRY_NAME_MAX:
            if self.tier != "host":
                return self._pin.tensor(name, self._component[1] or None)
            return self._pin.tensor_with_dtype(name, self._component[1] or None, cow=True,
                                               populate_now=populate)[0]
        # No daemon, or a name the registry cannot hold: the file's bytes.
        return self._file.array(name, cow=True, populate=populate)

    def _get(self, name, populate=True):
        dt, shape = self._describe(name)
        return to_framework(self._array(name, populate), dt, self._framework, self._device,
                             shape)

    def get_tensor(self, name):
        """Tensor @name: a numpy array (framework "np") or a torch tensor ("pt") viewing the
        shared cache or the file copy-on-write; for a CUDA device, the daemon's GPU tier
        serves it through DLPack (no copy)."""
        try:
            return self._get(name)
        except WeightdError as e:
            _raise_compat(e)

    def get_tensors(self):
        """Every tensor, as a dict name -> tensor in the order of their data in the file."""
        return {k: self.get_tensor(k) for k in self.offset_keys()}

    def get_slice(self, name):
        """A lazy slice object for @name (get_shape(), get_dtype(), [indices])."""
        try:
            self._describe(name)
        except WeightdError as e:
            _raise_compat(e)
        return _Slice(self, name)

    def close(self):
        """Drops this handle's pin and file mapping; live arrays keep theirs."""
        self._pin = None
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_file(filename, device="cpu", framework="np", socket=None, *, backend="mmap"):
    """Every tensor of @filename as a dict name -> array (numpy, or torch tensors with
    framework="pt"), through the daemon when it serves the file (safe_open's rules)."""
    with safe_open(filename, framework=framework, device=device, socket=socket,
                   backend=backend) as f:
        return f.get_tensors()


def load(data, framework="np"):
    """safetensors.numpy.load / safetensors.torch.load: every tensor of the safetensors file
    in the bytes @data, as a dict name -> array (framework "np") or torch tensor ("pt"). The
    header is checked with the file reader's rules (SafetensorError when it breaks them). The
    arrays are read-only views of @data for "np" (as the package's), and the torch tensors
    writable copies (as the package's)."""
    if str(framework) not in FRAMEWORKS:
        raise _st_error(WeightdError(errno.EINVAL, "framework %r: use \"np\" or \"pt\""
                                     % (framework,), "load"))
    try:
        stf = STFile.from_bytes(data)
        out = {}
        buf = memoryview(data).cast("B")
        base = 8 + stf.header_len
        for name, e in stf.entries.items():
            npdt = dtypes.NUMPY[e.dtype]
            ashape = dtypes.array_shape(e.dtype, e.shape)
            arr = np.frombuffer(buf[base + e.begin:base + e.end], dtype=npdt).reshape(ashape)
            if framework in ("np", "numpy"):
                out[name] = arr
            elif e.dtype in dtypes.SUBBYTE and e.dtype != "F4":
                # No torch dtype: the package's torch load() fails its dtype lookup, so does
                # this one, with the same KeyError.
                raise KeyError(e.dtype)
            else:
                out[name] = to_framework(arr.copy(), e.dtype, "pt", "cpu", e.shape)
        return out
    except WeightdError as e:
        _raise_compat(e)
