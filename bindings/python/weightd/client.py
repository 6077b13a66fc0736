"""The weightd client: a handle on the daemon, pins, and zero-copy tensor views.

Lifetime rules (README.md, "Pins and views", states them for users):

* A Client owns one libweightd handle (one lease). Pins live on it; the daemon drops them
  all when the handle is detached (close(), garbage collection of the Client, process exit).
* A Pin is this process's claim on (model, component, tier). The daemon holds a given target
  at most once per client, so Pins of the same target share one daemon pin, which is taken
  by the first and released by the last (a per-client reference count).
* A view (ndarray from Pin.tensor()) keeps its Pin, and so its Client, alive: memory a view
  points at is never unpinned or unmapped while the view exists, and so never recycled.
* Pin.release() (and leaving its `with` block) releases the pin at once when no view of it is
  alive, and raises BusyError, changing nothing, when views are still alive: the caller deletes
  them and calls release() again. A released Pin gives out no views (ReleasedError).
  Client.close() likewise refuses while any view of any of its pins is alive.
* Garbage collection releases a Pin that was not released explicitly; a finalizer that runs
  while this client is in the middle of a call (another thread, or a progress callback)
  leaves the unpin to the end of that call instead of blocking.

Wherever a method takes a model, it is a registry name or a path: of the model or of one of
its files, absolute or relative to the working directory (libweightd resolves it, see
weightd_lookup() in include/weightd.h). Pins name the model by its registry name.
"""

import ctypes
import errno
import gc
import itertools
import operator
import os
import threading
import weakref

import numpy as np

from . import _native as N
from . import dtypes
from .errors import (GPUTierUnavailableError, NotSupportedError, ReleasedError, BusyError,
                     WeightdError, error_from_code)
from .views import ViewSet, make_view, map_base
from .views import populate as views_populate

__all__ = ["connect", "Client", "Pin", "Model", "Component", "TensorMeta"]


def _b(s):
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    return str(s).encode("utf-8")


def _s(b):
    return b.decode("utf-8", "replace")


class Component:
    """A component as the registry shows it: id, model id, name, n_tensors, nbytes,
    fingerprint and per-tier state ({"host": ("resident", done, total), ...} for tiers that
    are not absent)."""

    __slots__ = ("id", "model", "name", "n_tensors", "nbytes", "fingerprint", "tiers")

    def __init__(self, ci):
        self.id = ci.id
        self.model = ci.model
        self.name = _s(ci.name)
        self.n_tensors = ci.n_tensors
        self.nbytes = ci.nbytes
        self.fingerprint = ci.fingerprint
        self.tiers = {}
        for t in range(N.TIER_MAX):
            ts = ci.tiers[t]
            if ts.state:
                name = N.STATE_NAMES[ts.state] if ts.state < len(N.STATE_NAMES) else "?"
                self.tiers[N.tier_name(t)] = (name, ts.done, ts.total)

    def __repr__(self):
        return "Component(%r, %d tensors, %d bytes)" % (self.name, self.n_tensors, self.nbytes)


class Model:
    """A model as the registry shows it: id, name, arch, n_tensors, nbytes, fingerprint,
    pins (all clients), stale, and its components (list of Component)."""

    __slots__ = ("id", "name", "arch", "n_tensors", "nbytes", "fingerprint", "pins", "stale",
                 "components")

    def __init__(self, mi, components):
        self.id = mi.id
        self.name = _s(mi.name)
        self.arch = _s(mi.arch)
        self.n_tensors = mi.n_tensors
        self.nbytes = mi.nbytes
        self.fingerprint = mi.fingerprint
        self.pins = mi.pins
        self.stale = bool(mi.flags & N.MODEL_STALE)
        self.components = components

    def __repr__(self):
        return "Model(%r, %d components, %d tensors, %d bytes)" % (
            self.name, len(self.components), self.n_tensors, self.nbytes)


class TensorMeta:
    """What the registry says about one tensor: name, dtype (safetensors name), shape,
    nbytes, resident tiers (set of names) and host_offset (None when not on the host)."""

    __slots__ = ("name", "dtype", "shape", "nbytes", "tiers", "host_offset", "_info")

    def __init__(self, name, ti):
        self.name = name
        self.dtype = _s(ti.dtype_name)
        self.shape = tuple(ti.shape[i] for i in range(ti.rank))
        self.nbytes = ti.nbytes
        self.tiers = {N.tier_name(t) for t in range(N.TIER_MAX) if ti.resident >> t & 1}
        self.host_offset = ti.host_offset if ti.resident & 1 else None
        self._info = ti

    def __repr__(self):
        return "TensorMeta(%r, %s, %s)" % (self.name, self.dtype, list(self.shape))


def _gpu_unavailable(what):
    return GPUTierUnavailableError(
        errno.ENOTSUP,
        "%s: a host-tier Pin gives no CUDA tensors; load or pin with tier=\"cuda:N\" for "
        "device tensors (weightd.device)" % what, "tensor")


class _Lease:
    __slots__ = ("key", "count")

    def __init__(self, key):
        self.key = key
        self.count = 0


class Client:
    """A connection to the daemon (see connect())."""

    def __init__(self, socket=None, spin_us=20, client_name="python", timeout_ms=0,
                 request_timeout_ms=0):
        lib = N.lib()
        self._lib = lib
        self._lock = threading.Lock()
        self._owner = None
        self._leases = {}
        self._pending = []
        self._closed = False
        self._h = None
        # Every Pin of this client, weakly: a Pin with a live view is alive (the view holds it).
        self._pins = weakref.WeakSet()
        # The GPU tier's device maps by lease key ({(component, form): device.DeviceMap}),
        # shared by this client's DevicePins of the key, unmapped when its lease ends.
        self._devmaps = {}
        # Bumped by every load, pin and unload this client makes: a Pin's table of tensor
        # locations (Pin._table) is rebuilt when it was read at another epoch.
        self._epoch = 0
        # Room for this many records in the next weightd_tensor_list() (grows to fit).
        self._list_cap = 1024
        self._names_cap = 64 * 1024
        # request_timeout_ms: a call raises (ETIMEDOUT, "not responding") when the daemon
        # shows no sign of life for that long; 0: $WEIGHTD_REQUEST_TIMEOUT_MS, else 30 s.
        opts = N.AttachOpts(spin_us=spin_us, client_name=_b(client_name),
                            attach_timeout_ms=timeout_ms,
                            request_timeout_ms=request_timeout_ms)
        h = ctypes.c_void_p()
        path = _b(os.fspath(socket)) if socket is not None else None
        ret = lib.weightd_attach(path, ctypes.byref(opts), ctypes.byref(h))
        if ret < 0:
            raise error_from_code(ret, N.last_error(), "connect", attach=True)
        self._h = h
        self._socket = None
        self._client_id = None

    # Read from the library on first use, not at connect: two prototypes and two calls that
    # a process which never asks need not pay for (~17 us of a fresh process's connect()).
    @property
    def socket(self):
        """The daemon's socket path this client attached to."""
        if self._socket is None:
            self._socket = self._fetch(self._lib.weightd_socket_path, _s)
        return self._socket

    @property
    def client_id(self):
        """The daemon's number for this client (as its logs and weightctl show it)."""
        if self._client_id is None:
            self._client_id = self._fetch(self._lib.weightd_client_id, int)
        return self._client_id

    def _fetch(self, fn, conv):
        self._enter()
        try:
            return conv(fn(self._h))
        finally:
            self._leave()

    # ---- plumbing ----

    def _enter(self):
        if self._owner == threading.get_ident():
            raise WeightdError(errno.EDEADLK, "a progress callback or finalizer called back "
                               "into the client whose call it runs in", "client")
        self._lock.acquire()
        self._owner = threading.get_ident()
        if self._closed:
            self._leave()
            raise ReleasedError(errno.EBADF, "the client is closed", "client")

    def _leave(self):
        # Unpins that finalizers deferred while this call held the handle run now.
        try:
            while self._pending and not self._closed:
                key = self._pending.pop()
                self._unmap_devices(key)
                self._lib.weightd_unpin(self._h, _b(key[0]), _b(key[1] or None), key[2])
        finally:
            self._owner = None
            self._lock.release()

    def _call(self, op, fn, *args):
        self._enter()
        try:
            ret = fn(self._h, *args)
            if ret < 0:
                raise error_from_code(ret, N.last_error(), op)
            return ret
        finally:
            self._leave()

    # ---- registry (no round trip) ----

    def models(self):
        """Every model the registry publishes, with its components (list of Model)."""
        comps = {}
        cid = 0
        ci = N.ComponentInfo()
        self._enter()
        try:
            while True:
                ret = self._lib.weightd_component(self._h, cid, ctypes.byref(ci))
                if ret == -errno.ENOENT:
                    break
                if ret < 0:
                    raise error_from_code(ret, N.last_error(), "models")
                comps.setdefault(ci.model, []).append(Component(ci))
                cid += 1
            out = []
            mi = N.ModelInfo()
            mid = 0
            while True:
                ret = self._lib.weightd_model(self._h, mid, ctypes.byref(mi))
                if ret == -errno.ENOENT:
                    break
                if ret < 0:
                    raise error_from_code(ret, N.last_error(), "models")
                out.append(Model(mi, comps.get(mi.id, [])))
                mid += 1
            return out
        finally:
            self._leave()

    def model(self, name):
        """The Model called @name; NotFoundError when the daemon knows none."""
        mid = ctypes.c_uint32()
        self._call("lookup", self._lib.weightd_lookup, _b(name), ctypes.byref(mid))
        for m in self.models():
            if m.id == mid.value:
                return m
        raise error_from_code(-errno.ENOENT, "model %s vanished from the registry" % name,
                              "lookup")

    def _canonical(self, model):
        """The registry name of @model, a name or a path (of the model or of one of its
        files, absolute or relative to the working directory). libweightd's weightd_lookup()
        resolves it -- the one place that does -- and this reads the name back, so that the
        pins and views of one model share one lease and name it with no round trip, whatever
        spelling the caller used."""
        mid = ctypes.c_uint32()
        self._call("lookup", self._lib.weightd_lookup, _b(model), ctypes.byref(mid))
        mi = N.ModelInfo()
        self._call("lookup", self._lib.weightd_model, mid.value, ctypes.byref(mi))
        return mi.name.decode("utf-8", "replace")

    def tensor_meta(self, model, name, component=None):
        """The registry's record of tensor @name of @model (TensorMeta); NotFoundError,
        or a WeightdError with ENOTUNIQ when @component is None and several have it."""
        ti = N.TensorInfo()
        self._call("tensor", self._lib.weightd_tensor, _b(model), _b(component), _b(name),
                   ctypes.byref(ti))
        return TensorMeta(name, ti)

    # ---- requests ----

    def ping(self):
        self._call("ping", self._lib.weightd_ping)

    def status(self, model, component=None, tier="host"):
        """The daemon's state of @model (or @component) on @tier: a dict with state
        ("absent", "loading", "resident", "evicting", "failed"), done and total bytes."""
        st = N.Status()
        ret = self._call("status", self._lib.weightd_status, _b(model), _b(component),
                         N.tier_number(tier), ctypes.byref(st))
        name = N.STATE_NAMES[ret] if ret < len(N.STATE_NAMES) else "?"
        return {"state": name, "done": st.done, "total": st.total}

    def _component_name(self, model, meta):
        cid = meta._info.component
        for m in self.models():
            for c in m.components:
                if c.id == cid:
                    return c.name
        raise error_from_code(-errno.ENOENT, "component %d of %s is not published"
                              % (cid, model), "load")

    def load(self, model, tier="host", tensors=None, dtype=None, progress=None, component=None,
             pin=True):
        """Makes @model resident on @tier and returns a Pin on it (None with pin=False).

        @component: one component ("unet"); None for all of them. @tensors: names of the
        tensors needed: with a daemon that loads selections (weightd_load_ex) only those are
        loaded, otherwise their whole components; either way only the components holding
        them are loaded and the Pin covers those. @dtype: "F16"/"BF16" (or numpy float16)
        has the daemon store F32 tensors converted (a separate shared copy, still zero-copy
        views); any other numpy dtype converts each tensor on access, a private copy (see
        Pin.tensor()). @progress: called as progress(done_bytes, total_bytes) in this thread;
        it must not call this client. The Pin's load_result says what the load did (hit,
        bytes, read_bytes, elapsed_ns) when the daemon reports it. On a "cuda:N" tier the
        whole components are loaded (@tensors only picks them), @dtype is None, "F16" or
        "BF16", and the Pin is a weightd.device.DevicePin whose tensors are device tensors
        (DLPack; bindings/python/README.md, "The GPU tier").
        Raises NotFoundError, BudgetExceededError (the target can never fit the tier's
        budget, or pinned data leaves no room), NotSupportedError (this daemon cannot load to
        that tier; GPUTierUnavailableError for cuda:N), MalformedFileError,
        DaemonUnavailableError, or a WeightdError with the daemon's code (ESTALE: a file
        changed since the daemon scanned it).
        """
        t = N.tier_number(tier)
        model = self._canonical(model)
        ex = getattr(self._lib, "weightd_load_ex", None)
        if tensors is not None:
            tensors = list(tensors)
            groups = {}
            for n in tensors:
                meta = self.tensor_meta(model, n, component)
                groups.setdefault(self._component_name(model, meta), []).append(n)
            pins = []
            for comp, names in sorted(groups.items()):
                p = self._load_one(model, t, comp or None, names if ex else None, dtype,
                                   progress, pin)
                if p is not None:
                    pins.append(p)
            if not pin:
                return None
            return pins[0] if len(pins) == 1 else _MultiPin(pins)
        return self._load_one(model, t, component, None, dtype, progress, pin)

    def _load_one(self, model, t, component, names, dtype, progress, pin):
        ex = getattr(self._lib, "weightd_load_ex", None)
        daemon_dtype = 0
        view_dtype = None
        if dtype is not None:
            import numpy as np
            if isinstance(dtype, str) and dtype.upper() in ("F16", "BF16"):
                daemon_dtype = N.DTYPE_F16 if dtype.upper() == "F16" else N.DTYPE_BF16
            elif np.dtype(dtype) == np.float16:
                daemon_dtype = N.DTYPE_F16
            else:
                view_dtype = np.dtype(dtype)
            if daemon_dtype and ex is None:
                if dtype in ("BF16", "bf16"):
                    raise NotSupportedError(errno.ENOTSUP, "this libweightd cannot have the "
                                            "daemon convert to BF16 (no weightd_load_ex)",
                                            "load")
                view_dtype, daemon_dtype = np.dtype(np.float16), 0
        if (names or daemon_dtype) and ex is None:
            names = None
        if t != N.TIER_HOST:
            # This binding maps whole components on a GPU tier (the daemon can also hold a
            # selection, protocol.md 4.6, which the binding does not ask for), and its
            # tensors are device tensors, which numpy cannot convert in place.
            names = None
            if view_dtype is not None:
                raise NotSupportedError(errno.ENOTSUP, "dtype %s on %s: the daemon converts "
                                        "F32 to \"F16\" or \"BF16\" only; convert the "
                                        "tensors on the device" % (view_dtype, N.tier_name(t)),
                                        "load")
        errbox = []

        def trampoline(done, total, _arg):
            try:
                progress(done, total)
            except BaseException as e:  # re-raised after the call; C cannot unwind
                if not errbox:
                    errbox.append(e)

        cb = N.PROGRESS_FN(trampoline) if progress else N.PROGRESS_FN()
        flags = N.LOAD_PIN if pin else 0
        if not progress:
            flags |= N.LOAD_NO_PROGRESS
        key = (str(model), component or "", t)
        res = N.LoadResult()
        opts = None
        if ex is not None and (names or daemon_dtype):
            opts = N.LoadOpts(dtype=daemon_dtype)
            if names:
                arr = (ctypes.c_char_p * len(names))(*[_b(n) for n in names])
                opts.names = ctypes.cast(arr, ctypes.POINTER(ctypes.c_char_p))
                opts.n_names = len(names)
        self._enter()
        try:
            self._epoch += 1
            if ex is not None:
                ret = ex(self._h, _b(model), _b(component or None), t, flags,
                         ctypes.byref(opts) if opts is not None else None, cb, None,
                         ctypes.byref(res))
            else:
                ret = self._lib.weightd_load(self._h, _b(model), _b(component or None), t,
                                             flags, cb, None)
            if ret < 0:
                err = error_from_code(ret, N.last_error(), "load")
                if t != N.TIER_HOST and isinstance(err, NotSupportedError):
                    err = GPUTierUnavailableError(
                        err.errno, "the GPU tier (%s) is not available: the daemon says: %s"
                        % (N.tier_name(t), err.message), "load")
                raise err
            if pin:
                lease = self._leases.setdefault(key, _Lease(key))
                lease.count += 1
        finally:
            self._leave()
        if errbox:
            raise errbox[0]
        if not pin:
            return None
        if t != N.TIER_HOST:
            from .device import DevicePin
            p = DevicePin(self, key, daemon_dtype)
        else:
            p = Pin(self, key, view_dtype)
        if ex is not None:
            p.load_result = {"bytes": res.bytes, "read_bytes": res.read_bytes,
                             "hit": bool(res.hit), "elapsed_ns": res.elapsed_ns}
        return p

    def unload(self, model, component=None, tier="host"):
        """Drops @model (or @component) from @tier. BusyError when another client pins it."""
        self._epoch += 1
        self._call("unload", self._lib.weightd_unload, _b(model), _b(component),
                   N.tier_number(tier))

    def pin(self, model, component=None, tier="host"):
        """Pins @model (or @component) on @tier so the daemon never evicts it, and returns
        the Pin; views of its tensors come from Pin.tensor(). NotFoundError for an unknown
        target."""
        t = N.tier_number(tier)
        key = (self._canonical(model), component or "", t)
        self._enter()
        try:
            self._epoch += 1
            lease = self._leases.get(key)
            if lease is None or lease.count == 0:
                ret = self._lib.weightd_pin(self._h, _b(model), _b(component or None), t)
                if ret < 0:
                    raise error_from_code(ret, N.last_error(), "pin")
                lease = self._leases.setdefault(key, _Lease(key))
            lease.count += 1
        finally:
            self._leave()
        if t != N.TIER_HOST:
            from .device import DevicePin
            return DevicePin(self, key, 0)
        return Pin(self, key, None)

    def devices(self):
        """The daemon's GPUs and, when it has none, why: (list of dicts, reason); see
        weightd.device.devices()."""
        from .device import devices
        return devices(self)

    def device_trim(self, device, nbytes):
        """Asks the daemon for @nbytes of room on its GPU cuda:@device (unpinned, unmapped
        components evicted); returns the bytes freed. weightd.device.trim()."""
        from .device import trim
        return trim(self, device, nbytes)

    def cache_stats(self):
        """The host tier's counters (dict: budget, bytes, entries, hits, misses, evictions,
        loads, read_bytes (of which read_direct_bytes with O_DIRECT, read_buffered_bytes
        through the page cache), coalesced, dedup_bytes, mapped_bytes, ...). NotSupportedError
        with a libweightd that has no host tier."""
        fn = getattr(self._lib, "weightd_cache_stats", None)
        if fn is None:
            raise NotSupportedError(errno.ENOTSUP, "this libweightd has no host-tier counters "
                                    "(weightd_cache_stats)", "cache_stats")
        st = N.CacheStats()
        self._call("cache_stats", fn, ctypes.byref(st))
        return {n: getattr(st, n) for n in N.CACHE_STATS_FIELDS}

    def stats(self):
        """The daemon's counters and this client's (dict: requests, errors, pins, clients,
        pins_total, models, host_budget, host_bytes, loads, evictions, ..., host_page_size
        and host_pages: "4k", "thp" or "hugetlb", the pages behind the host cache)."""
        st = N.Stats()
        self._call("stats", self._lib.weightd_stats, ctypes.byref(st))
        d = {n: getattr(st, n) for n in N.STATS_FIELDS}
        d["host_page_size"] = st.host_page_size
        d["host_pages"] = N.PAGE_KINDS.get(st.host_page_kind, "?")
        return d

    def scan(self, directory=None):
        """Has the daemon discover models under @directory (absolute; None: its roots).
        Returns the number of models found."""
        d = os.path.abspath(directory) if directory is not None else None
        return self._call("scan", self._lib.weightd_scan, _b(d), N.PROGRESS_FN(), None)

    def validate(self, model, component=None, deep=False):
        """Has the daemon re-check @model's files; MalformedFileError names what is wrong."""
        self._call("validate", self._lib.weightd_validate, _b(model), _b(component),
                   N.VALIDATE_DEEP if deep else 0, N.PROGRESS_FN(), None)

    def daemon_pid(self):
        return self._call("daemon_pid", self._lib.weightd_daemon_pid)

    # ---- pins (called by Pin) ----

    def _release_key(self, key, deferred_ok):
        """Drops one reference to the lease @key; unpins at the daemon when it was the last.
        @deferred_ok: from a finalizer, which must never block or raise."""
        if deferred_ok:
            if self._closed:
                return
            if not self._lock.acquire(blocking=False):
                lease = self._leases.get(key)
                if lease is not None:
                    lease.count -= 1
                    if lease.count == 0:
                        del self._leases[key]
                        self._pending.append(key)
                return
            self._owner = threading.get_ident()
            try:
                self._drop(key, raise_errors=False)
            finally:
                self._leave()
            return
        self._enter()
        try:
            self._drop(key, raise_errors=True)
        finally:
            self._leave()

    def _drop(self, key, raise_errors):
        lease = self._leases.get(key)
        if lease is None:
            return
        lease.count -= 1
        if lease.count > 0:
            return
        del self._leases[key]
        self._unmap_devices(key)
        ret = self._lib.weightd_unpin(self._h, _b(key[0]), _b(key[1] or None), key[2])
        if ret < 0 and raise_errors and ret != -errno.ENOENT:
            raise error_from_code(ret, N.last_error(), "unpin")

    def _unmap_devices(self, key):
        """Unmaps the device maps of lease @key (its last Pin is gone); client entered."""
        maps = self._devmaps.pop(key, None) if self._devmaps else None
        if maps:
            from .device import unmap_all
            unmap_all(self, maps)

    def _register_pin(self, pin):
        self._pins.add(pin)

    def live_views(self):
        """Views of this client's pins that are still alive."""
        return sum(len(p._views) for p in list(self._pins))

    # ---- lifetime ----

    def close(self):
        """Detaches: the daemon drops every pin of this client. BusyError when views of its
        pins are still alive (delete them first); closing twice is allowed."""
        if self._closed or self._h is None:
            return
        n = self.live_views()
        if n:
            raise BusyError(errno.EBUSY, "%d views of this client's pins are still alive; "
                            "delete them before closing" % n, "close")
        self._lock.acquire()
        try:
            # Kept readable after close (the properties read them from the handle).
            if self._socket is None:
                self._socket = _s(self._lib.weightd_socket_path(self._h))
            if self._client_id is None:
                self._client_id = int(self._lib.weightd_client_id(self._h))
            self._closed = True
            for key in list(self._devmaps):
                self._unmap_devices(key)
            self._leases.clear()
            self._pending.clear()
            self._lib.weightd_detach(self._h)
            self._h = None
        finally:
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Views keep their Pin and the Pin keeps this Client: no view is alive here.
        h = getattr(self, "_h", None)
        if h is not None and not self._closed:
            self._closed = True
            for key in list(getattr(self, "_devmaps", ())):
                self._unmap_devices(key)
            self._lib.weightd_detach(h)
            self._h = None


_TENSOR_DATA = []


def _tensor_data_fn(lib):
    if not _TENSOR_DATA:
        _TENSOR_DATA.append(getattr(lib, "weightd_tensor_data", None))
    return _TENSOR_DATA[0]


def _check_dtype(dtype):
    import numpy as np
    return np.dtype(dtype)


def _convert(arr, st_dtype, target):
    """A copy of @arr (safetensors dtype @st_dtype) converted to numpy dtype @target."""
    import numpy as np
    if st_dtype == "BF16":
        wide = arr.astype(np.uint32) << 16
        return wide.view(np.float32).astype(target)
    if st_dtype in dtypes.RAW:
        raise NotSupportedError(errno.ENOTSUP, "no numpy conversion from %s to %s: numpy has "
                                "no %s type; read the raw view without dtype="
                                % (st_dtype, target, st_dtype), "tensor")
    return arr.astype(target)


# weightd_tensor_loc read as u64 words (offset 0, nbytes 1, shape 4 + r) and as u32 words
# (dtype 4, rank 5): memoryview.cast() and strided slices turn each column into a list in C.
_LOC_WORDS = ctypes.sizeof(N.TensorLoc) // 8
assert ctypes.sizeof(N.TensorLoc) % 8 == 0 and N.TensorLoc.offset.offset == 0 and \
    N.TensorLoc.dtype.offset == 16 and N.TensorLoc.rank.offset == 20 and \
    N.TensorLoc.shape.offset == 32, "weightd_tensor_loc layout"


class _NoGC:
    """Suspends the cyclic garbage collector around a bulk build (the table of a thousand
    tensors, or a thousand arrays): those allocate a few thousand container objects, and the
    collections they trigger scan every young object each time -- measured at more than the
    build itself in a fresh process. Nothing built here is garbage, so nothing is missed; the
    collector is re-enabled on the way out when it was enabled on the way in."""

    __slots__ = ("was",)

    def __enter__(self):
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            gc.enable()


# _SLICES[r] cuts a padded shape row to rank r (map(getitem, rows, slices): no Python loop).
_SLICES = [slice(0, r) for r in range(17)]


class _Shapes(dict):
    """Maps a shape tuple to the first equal tuple it was given (map(shapes.__getitem__,
    rows) keeps one object per distinct shape); only a shape not seen yet runs Python code."""

    __slots__ = ()

    def __missing__(self, shape):
        self[shape] = shape
        return shape


class _Table:
    """Where every host-resident tensor of a pin lies, read from the registry in one
    weightd_tensor_table() call, as parallel lists (tensor i: keys[i], safetensors dtype
    dtnames[i], numpy dtype npdts[i], array shape shapes[i], offset offs[i] in the extent).
    The extent, host-cache bytes host_offset .. host_offset + size, holds every listed
    tensor (the library checks each against the host cache's size), mmap checks the extent
    against the file, and numpy checks each view against its base, the mapping of the
    extent (Pin._base). get(name) looks one tensor up (the dict is built on first use: Pin.tensors() needs
    none)."""

    __slots__ = ("epoch", "host_fd", "host_offset", "size", "keys", "dtnames", "npdts",
                 "shapes", "offs", "dtypes", "_where")

    def __init__(self, epoch, host_fd=-1, host_offset=0, size=0, cols=((), (), (), (), ())):
        self.epoch = epoch
        self.host_fd = host_fd
        self.host_offset = host_offset
        self.size = size
        self.keys, self.dtnames, self.npdts, self.shapes, self.offs = cols
        self.dtypes = set(self.dtnames)
        self._where = None

    def get(self, name):
        w = self._where
        if w is None:
            w = self._where = dict(zip(self.keys, zip(self.dtnames, self.npdts, self.shapes,
                                                      self.offs)))
        return w.get(name)


def _read_table(c, model, component):
    """A _Table of @model/@component as the registry shows it now, or None when this
    libweightd has no weightd_tensor_table() or no listed tensor has a byte (callers then
    resolve each tensor by name, which reports errors precisely). Called with the client
    entered. Column-wise numpy work and C-level map/zip: a per-tensor Python loop would cost
    as much as the views themselves."""
    fn = getattr(c._lib, "weightd_tensor_table", None)
    if fn is None:
        return None
    tab = N.TensorTable()
    cap, ncap = c._list_cap, c._names_cap
    W = _LOC_WORDS
    while True:
        locs = np.empty(cap * W, dtype=np.uint64)
        names = np.empty(ncap, dtype=np.uint8)
        # The addresses from __array_interface__: ndarray.ctypes builds a helper object per
        # array, three times the cost in a fresh process.
        ret = fn(c._h, _b(model), _b(component), locs.__array_interface__["data"][0], cap,
                 names.__array_interface__["data"][0], ncap, ctypes.byref(tab))
        if ret == -errno.ENOBUFS and (tab.n > cap or tab.names_len > ncap):
            cap = c._list_cap = max(cap, tab.n)
            ncap = c._names_cap = max(ncap, tab.names_len)
            continue
        if ret < 0:
            return None
        break
    n = tab.n
    if not n or not tab.base:
        return None
    # Names hold no NUL byte (the registry stores them NUL-terminated): one decode for all.
    keys = names[:tab.names_len - 1].tobytes().decode("utf-8", "replace").split("\0")
    if len(keys) != n:
        return None
    q = memoryview(locs)[:n * W]
    q32 = q.cast("B").cast("I")
    nums = q32[4::2 * W].tolist()
    ranks = q32[5::2 * W].tolist()
    # list.count() compares small ints by identity: an O(n) pass in C, cheaper than min/max.
    dt0 = nums[0]
    if nums.count(dt0) == n:
        # One dtype for the whole pin (the usual case): no per-tensor lookups.
        if dt0 >= len(dtypes.NAMES):
            return None
        dtnames = [dtypes.NAMES[dt0]] * n
        npdts = [dtypes.NUMPY_BY_NUMBER[dt0]] * n
        subbyte = dtnames[0] in dtypes.SUBBYTE
    else:
        if max(nums) >= len(dtypes.NAMES):
            return None
        dtnames = list(map(dtypes.NAMES.__getitem__, nums))
        npdts = list(map(dtypes.NUMPY_BY_NUMBER.__getitem__, nums))
        subbyte = not dtypes.SUBBYTE.isdisjoint(dtnames)
    canon = _Shapes()
    r0 = ranks[0]
    one_rank = ranks.count(r0) == n
    maxr = r0 if one_rank else max(ranks)
    if maxr:
        # Shapes as tuples, one column per dimension zipped together; shorter ranks cut.
        rows = zip(*[q[4 + r::W].tolist() for r in range(maxr)])
        if not one_rank:
            rows = map(operator.getitem, rows, map(_SLICES.__getitem__, ranks))
        # One tuple object per distinct shape (_Shapes): a model repeats a few shapes, and
        # a thousand new tuples would be a thousand objects for the garbage collector to
        # track -- its next young-generation pass over them cost ~90 us in a fresh process,
        # more than making them. zip() reuses its result tuple when the lookup found the
        # shape already there, so a repeated shape allocates nothing.
        shapes = list(map(canon.__getitem__, rows))
    else:
        shapes = [()] * n
    if subbyte:
        shapes = [canon[dtypes.array_shape(d, sh)] if d in dtypes.SUBBYTE else sh
                  for d, sh in zip(dtnames, shapes)]
    offs = q[0::W].tolist()
    cols = (keys, dtnames, npdts, shapes, offs)
    if component is None and tab.n_components > 1 and len(set(keys)) != n:
        # The same name in two components of the model: tensor() must say ENOTUNIQ, as
        # weightd_tensor() does, so such a name is left to the lookup by name.
        seen, dups = set(), set()
        for k in keys:
            (dups if k in seen else seen).add(k)
        keep = [i for i, k in enumerate(keys) if k not in dups]
        cols = tuple([col[i] for i in keep] for col in cols)
    return _Table(c._epoch, tab.host_fd, tab.host_offset, tab.nbytes, cols)


class Pin:
    """A pin on (model, component, tier) and the source of zero-copy views of its tensors.

    Attributes: model, component ("" for the whole model), tier ("host", "cuda:N").
    See the module comment for the release semantics.

    Views come from a table of the pin's tensor locations read once per load epoch (one
    registry pass, see _read_table) and one read-only mapping of the pin's extent per dtype
    (views.map_base, the views' base): a view then costs a dict lookup and one numpy
    constructor. Tensors the table does not hold (names several components share, tensors
    not resident) are resolved one by one with weightd_tensor(), which reports why.
    """

    def __init__(self, client, key, dtype):
        self._client = client
        self._key = key
        self._dtype = dtype
        self._views = ViewSet()
        self._table = None
        self._released = False
        self.load_result = None
        self.model, self.component, self._tier = key
        self.tier = N.tier_name(self._tier)
        client._register_pin(self)

    def tensor(self, name, component=None):
        """Tensor @name as a read-only numpy array viewing the shared host cache (no copy).

        BF16 and the F8 types are raw uint16/uint8 arrays; weightd.tensor_dtype(array) or
        tensor_with_dtype() gives the safetensors dtype. With a dtype= given to load(), the
        result is a converted copy instead. Raises ReleasedError after release(),
        NotFoundError (no such tensor), WeightdError(ENODATA) when it is not resident on
        the host. (A pin on cuda:N is a weightd.device.DevicePin: device tensors.)
        """
        return self.tensor_with_dtype(name, component)[0]

    def tensors(self, names=None, cow=False, populate=False):
        """A dict name -> array (as tensor() gives them) of @names, or of every tensor of
        this pin that is resident on the host (on a whole-model pin, leaving out names that
        several components share: take those with tensor(name, component)). One call for
        all is cheaper than tensor() per name. With @populate (for a caller that will read
        every byte) the pages of the pin's extent are mapped now, in one madvise
        (MADV_POPULATE_READ) per dtype, instead of faulted in one 4 KiB page at a time when
        first read; without it the views cost no page until used. @cow as
        tensor_with_dtype(). Errors as tensor()."""
        if self._released:
            raise ReleasedError(errno.EBADF, "pin on %s was released; take a new one"
                                % self._target(), "tensor")
        if self._tier != N.TIER_HOST:
            raise _gpu_unavailable("tensors on %s" % self.tier)
        tab = self._current_table()
        if names is None and self._dtype is None and tab.keys:
            # Every tensor of the table: the view tensor_with_dtype() makes, for all of them
            # at once (np.ndarray mapped over the columns: no per-tensor Python code).
            bases = {dt: self._base(tab, dt, cow) for dt in tab.dtypes}
            if populate:
                for b in bases.values():
                    views_populate(b)
            if len(bases) == 1:
                per = itertools.repeat(next(iter(bases.values())), len(tab.keys))
            else:
                per = map(bases.__getitem__, tab.dtnames)
            with _NoGC():
                out = dict(zip(tab.keys, map(np.ndarray, tab.shapes, tab.npdts, per,
                                             tab.offs)))
            del bases, per
            if self._released:
                # release() ran meanwhile (see tensor_with_dtype()): it decides, locked.
                del out
                return self.tensors(names, cow, populate)
            return out
        if names is None:
            names = list(tab.keys)
        tw = self.tensor_with_dtype
        return {n: tw(n, cow=cow, populate_now=populate)[0] for n in names}

    def _current_table(self):
        c = self._client
        tab = self._table
        if tab is None or tab.epoch != c._epoch:
            tab = None
            if self._tier == N.TIER_HOST and not self._released:
                c._enter()
                try:
                    with _NoGC():
                        tab = _read_table(c, self.model, self.component or None)
                finally:
                    c._leave()
            if tab is None:
                tab = _Table(c._epoch)
            self._table = tab
        return tab

    def tensor_with_dtype(self, name, component=None, cow=False, populate_now=False):
        """(array, safetensors dtype name) for tensor @name; see tensor().
        @cow: a writable view of a private mapping of the cache (copy-on-write: a write copies
        the page it touches into this process, the shared cache never changes; torch tensors
        are made from these). A tensor that has to be looked up by name (not in the pin's
        table) is then a private copy. @populate_now: the tensor's pages are mapped now, in
        one madvise(MADV_POPULATE_READ)."""
        tab = self._table
        if (tab is None or tab.epoch != self._client._epoch) and not self._released:
            tab = self._current_table()
        where = tab.get(name) if tab is not None else None
        if where is None or self._released or (component is not None
                                               and component != self.component):
            return self._tensor_by_name(name, component, cow)
        dt, npdt, shape, off = where
        base = self._base(tab, dt, cow)
        arr = np.ndarray(shape, npdt, base, off)
        if populate_now and arr.nbytes:
            views_populate(base, off, arr.nbytes)
        # release() marks the pin released before it counts the views: if it did so since the
        # check above, this view may have been missed, so it is dropped and the locked path
        # decides (ReleasedError when the release went through).
        if self._released:
            del arr, base
            return self._tensor_by_name(name, component, cow)
        if self._dtype is not None:
            arr = _convert(arr, dt, self._dtype)
        return arr, dt

    def _base(self, tab, dt, cow=False):
        """The base of this pin's views of dtype @dt over @tab's extent (views.map_base; with
        @cow its private copy-on-write form), or the one alive from an earlier call. It is
        mapped with the client entered: that proves the handle, and so tab.host_fd, still
        open (close() takes the same lock)."""
        key = (dt, tab.host_offset, tab.size, cow)
        ref = self._views.bases.get(key)
        base = ref() if ref is not None else None
        if base is not None:
            return base
        c = self._client
        c._enter()
        try:
            base = map_base(tab.host_fd, tab.host_offset, tab.size, dt, self, cow)
        except (OSError, ValueError) as e:
            raise WeightdError(getattr(e, "errno", None) or errno.EFAULT,
                               "mapping %d bytes of the host cache at offset %d for %s: %s"
                               % (tab.size, tab.host_offset, self._target(), e),
                               "tensor") from None
        finally:
            c._leave()
        self._views.bases[key] = weakref.ref(base)
        return base

    def _tensor_by_name(self, name, component, cow=False):
        """tensor_with_dtype() through weightd_tensor(): one registry lookup and one
        ctypes array for this view (with @cow a private copy: the library's mapping of the
        cache is read-only)."""
        c = self._client
        comp = component if component is not None else (self.component or None)
        ti = N.TensorInfo()
        c._enter()
        try:
            if self._released:
                raise ReleasedError(errno.EBADF, "pin on %s was released; take a new one"
                                    % self._target(), "tensor")
            if self._tier != N.TIER_HOST:
                raise _gpu_unavailable("%s on %s" % (name, self.tier))
            lib = c._lib
            ret = lib.weightd_tensor(c._h, _b(self.model), _b(comp), _b(name), ctypes.byref(ti))
            if ret < 0:
                raise error_from_code(ret, N.last_error(), "tensor")
            fn = _tensor_data_fn(lib)
            if fn is None:
                raise NotSupportedError(errno.ENOTSUP, "this libweightd (%s) has no "
                                        "weightd_tensor_data(): it cannot map the host cache"
                                        % N.lib_path(), "tensor")
            addr = fn(c._h, ctypes.byref(ti)) if ti.nbytes else 0
            if addr is None or (addr == 0 and ti.nbytes):
                raise error_from_code(-ctypes.get_errno() or -errno.ENODATA,
                                      "%s of %s is not resident in the host cache (%s)"
                                      % (name, self.model, N.last_error()), "tensor")
            dt = _s(ti.dtype_name)
            shape = tuple(ti.shape[i] for i in range(ti.rank))
            # Made under the lock: release() counts views under it too.
            arr = make_view(addr or 0, dt, shape, self, self._views)
        finally:
            c._leave()
        if self._dtype is not None:
            arr = _convert(arr, dt, self._dtype)
        elif cow:
            arr = arr.copy()
        return arr, dt

    def live_views(self):
        """How many views of this pin are alive: arrays it returned and their slices and
        numpy views (each counts, through its base)."""
        return len(self._views)

    @property
    def released(self):
        return self._released

    def _target(self):
        t = self.model + ("/" + self.component if self.component else "")
        return "%s on %s" % (t, self.tier)

    def release(self):
        """Releases the pin now. BusyError (nothing changes) while views are alive;
        releasing twice is allowed."""
        if self._released:
            return
        c = self._client
        c._enter()
        try:
            if self._released:
                return
            # Marked before counting: a view made concurrently without the lock either is
            # counted here or sees the mark and is dropped (tensor_with_dtype()).
            self._released = True
            n = len(self._views)
            if n:
                self._released = False
                raise BusyError(errno.EBUSY, "pin on %s still has %d live views; delete them "
                                "(and their slices) before releasing it" % (self._target(), n),
                                "release")
            self._table = None
            c._drop(self._key, raise_errors=True)
        finally:
            c._leave()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        if getattr(self, "_released", True):
            return
        self._released = True
        try:
            self._client._release_key(self._key, deferred_ok=True)
        except Exception:
            pass

    def __repr__(self):
        return "Pin(%s%s)" % (self._target(), ", released" if self._released else "")


class _MultiPin(Pin):
    """Pins on several components of one model (load(tensors=...)): tensor() finds the
    component by itself, release() releases them all."""

    def __init__(self, pins):
        self._pins = pins
        self._released = False
        p0 = pins[0]
        self._client = p0._client
        self.model = p0.model
        self.component = ""
        self._tier = p0._tier
        self.tier = p0.tier

    def tensor_with_dtype(self, name, component=None):
        if self._released:
            raise ReleasedError(errno.EBADF, "pin on %s was released" % self._target(),
                                "tensor")
        comp = component or self._client._component_name(
            self.model, self._client.tensor_meta(self.model, name))
        for p in self._pins:
            if p.component == comp:
                return p.tensor_with_dtype(name, comp)
        raise error_from_code(-errno.ENOENT, "%s is in component %s, which this pin does not "
                              "cover" % (name, comp), "tensor")

    def tensors(self, names=None):
        if names is not None:
            return {n: self.tensor(n) for n in names}
        out = {}
        for p in self._pins:
            out.update(p.tensors())
        return out

    def live_views(self):
        return sum(p.live_views() for p in self._pins)

    def release(self):
        if self._released:
            return
        n = self.live_views()
        if n:
            raise BusyError(errno.EBUSY, "pins on %s still have %d live views"
                            % (self.model, n), "release")
        self._released = True
        for p in self._pins:
            p.release()

    def __del__(self):
        self._released = True


def connect(socket=None, **kwargs):
    """Attaches to the daemon at @socket (None: $WEIGHTD_SOCKET, else the per-user default)
    and returns a Client. Keyword arguments: spin_us, client_name, timeout_ms (the attach),
    request_timeout_ms (include/weightd.h: a daemon silent for that long fails the call).
    Raises DaemonUnavailableError when no daemon listens there, LibraryUnavailableError when
    libweightd cannot be loaded, or a WeightdError with the attach error."""
    return Client(socket, **kwargs)
