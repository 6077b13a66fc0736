"""The safetensors-compatible surface: safe_open() and load_file() through the daemon.

`from weightd import safe_open` (or `from weightd.numpy import load_file`, `from
weightd.torch import load_file`) replaces the safetensors import of the same name.

How a path reaches the daemon: the file's header is read (it is needed anyway for keys() and
metadata()), and its XXH3-64 hash is combined the way the daemon fingerprints components
(core/daemon.c: a single file, or every shard of an HF sharded index in name order). The
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

Differences from safetensors, all deliberate: arrays are read-only views (no copy) on both
paths; BF16 and F8 tensors are raw uint16/uint8 arrays in framework "np" (numpy has no such
types; weightd.tensor_dtype() names the real dtype); get_slice() results are views too.
"""

import ctypes
import errno
import json
import os
import struct
import threading
import warnings

from . import dtypes
from .client import Client
from .errors import (DaemonUnavailableError, GPUTierUnavailableError, LibraryUnavailableError,
                     NotSupportedError, WeightdError, WeightdFallbackWarning)
from .stfile import STFile

__all__ = ["safe_open", "load_file", "SafetensorError"]

SafetensorError = WeightdError

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
            with open(os.path.join(d, idx)) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if base not in shards:
            continue
        hs = []
        for s in shards:
            p = os.path.join(d, s)
            try:
                with open(p, "rb") as f:
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
            # collision before any view is handed out.
            probe = next(iter(names), None)
            if probe is not None:
                try:
                    client.tensor_meta(m.name, probe, c.name or None)
                except WeightdError:
                    continue
            return m.name, c.name
    return None


def _torch():
    try:
        import torch
    except ImportError:
        raise NotSupportedError(errno.ENOTSUP, "framework \"pt\" needs torch, which is not "
                                "installed", "safe_open") from None
    return torch


def _to_framework(arr, st_dtype, framework, device):
    if getattr(arr, "__dlpack_device__", None) is not None and not hasattr(arr, "ndim"):
        # A device tensor of the daemon's GPU tier (weightd.device.DeviceTensor).
        if framework in ("np", "numpy"):
            raise WeightdError(errno.EINVAL, "framework \"np\" holds arrays in host memory; "
                               "device %r needs framework \"pt\"" % (device,), "get_tensor")
        _torch()
        from .torch import from_device_tensor
        t = from_device_tensor(arr)
        if t.device.type != "cuda":
            # The emulated device's memory is host memory (kDLCPU): copy it where asked.
            t = t.to(device)
        return t
    if framework in ("np", "numpy"):
        if device not in ("cpu", None):
            raise WeightdError(errno.EINVAL, "framework \"np\" holds arrays in host memory; "
                               "device %r needs framework \"pt\"" % (device,), "get_tensor")
        return arr
    _torch()
    from .torch import from_numpy_view
    t = from_numpy_view(arr, st_dtype)
    if device not in ("cpu", None):
        t = t.to(device)
    return t


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


class _Slice:
    """safetensors' PySafeSlice: get_shape(), get_dtype(), and basic indexing (integers,
    slices with step 1, Ellipsis) that reads only the selected part."""

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
        if self._dtype in dtypes.SUBBYTE:
            raise WeightdError(errno.EINVAL, "%s is %s, packed below one byte per element: "
                               "it cannot be sliced" % (self._name, self._dtype), "get_slice")
        if not isinstance(index, tuple):
            index = (index,)
        n_ell = sum(1 for i in index if i is Ellipsis)
        if n_ell > 1:
            raise WeightdError(errno.EINVAL, "an index can only have a single ellipsis",
                               "get_slice")
        rank = len(self._shape)
        if len(index) - n_ell > rank:
            raise WeightdError(errno.EINVAL, "%d indices for tensor %s of rank %d"
                               % (len(index) - n_ell, self._name, rank), "get_slice")
        for i in index:
            if isinstance(i, slice):
                if i.step not in (None, 1):
                    raise WeightdError(errno.EINVAL, "slice steps other than 1 are not "
                                       "supported (got %r)" % (i.step,), "get_slice")
            elif i is not Ellipsis and not (isinstance(i, int) and not isinstance(i, bool)):
                raise WeightdError(errno.EINVAL, "index %r is not an int, a slice or ..."
                                   % (i,), "get_slice")
        # Integers out of range raise like Python sequences do.
        full = list(index)
        if n_ell:
            k = full.index(Ellipsis)
            full[k:k + 1] = [slice(None)] * (rank - (len(full) - 1))
        for axis, i in enumerate(full):
            if isinstance(i, int) and not -self._shape[axis] <= i < self._shape[axis]:
                raise WeightdError(errno.EINVAL, "index %d is out of bounds for axis %d "
                                   "with size %d" % (i, axis, self._shape[axis]), "get_slice")
        arr = self._owner._array(self._name)
        if not hasattr(arr, "ndim"):
            # A device tensor: sliced as a framework tensor, on the device.
            whole = _to_framework(arr, self._dtype, self._owner._framework, self._owner._device)
            return whole[tuple(full)]
        arr = arr[tuple(full)]
        return _to_framework(arr, self._dtype, self._owner._framework, self._owner._device)


class safe_open:
    """safetensors.safe_open over the daemon (module comment).

    safe_open(filename, framework="np"|"pt", device="cpu"|"cuda:N", socket=None)
    Methods: keys(), metadata(), get_tensor(name), get_slice(name); attributes source,
    fallback_reason, tier ("host", or "cuda:N" when the daemon's GPU tier serves a CUDA
    device) and gpu_fallback_reason (why a CUDA device is served from the host tier and
    copied with .to(device): a daemon without a GPU tier). Use it as a context manager or
    call close(); arrays taken from it stay valid after either (they keep their pin or file
    mapping alive themselves).
    Raises MalformedFileError for a file that breaks the format, WeightdError(ENOENT...) when
    it cannot be opened.
    """

    def __init__(self, filename, framework="np", device="cpu", socket=None):
        if framework not in ("np", "numpy", "pt", "pytorch", "torch"):
            raise WeightdError(errno.EINVAL, "framework %r: use \"np\" or \"pt\"" % (framework,),
                               "safe_open")
        self._framework = "np" if framework in ("np", "numpy") else "pt"
        self._device = device
        self._file = STFile(filename)
        self._pin = None
        self._component = None
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
            raise WeightdError(errno.ENOENT, "no tensor %r in %s" % (name, self._file.path),
                               "get_tensor")
        return e.dtype, e.shape

    def _array(self, name):
        dt, _ = self._describe(name)
        if self.source == "daemon":
            return self._pin.tensor(name, self._component[1] or None)
        return self._file.array(name)

    def get_tensor(self, name):
        """Tensor @name: a read-only numpy array (framework "np") or a torch tensor ("pt"),
        for a CUDA device the daemon's GPU tier serves through DLPack (no copy)."""
        dt, _ = self._describe(name)
        return _to_framework(self._array(name), dt, self._framework, self._device)

    def get_slice(self, name):
        """A lazy slice object for @name (get_shape(), get_dtype(), [indices])."""
        self._describe(name)
        return _Slice(self, name)

    def close(self):
        """Drops this handle's pin and file mapping; live arrays keep theirs."""
        self._pin = None
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_file(filename, device="cpu", framework="np", socket=None):
    """Every tensor of @filename as a dict name -> array (read-only numpy views, or torch
    tensors with framework="pt"), through the daemon when it serves the file."""
    with safe_open(filename, framework=framework, device=device, socket=socket) as f:
        return {k: f.get_tensor(k) for k in f.offset_keys()}
