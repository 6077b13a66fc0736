"""The client's handle on libweightd, below every module that uses it: the attach and its
lock (_enter/_leave: one call at a time per handle, finalizers' unpins deferred to the end of
a call), the registry reads (models, lookup, tensor records: no round trip), the per-client
pin bookkeeping (leases, deferred unpins, device maps dropped with their lease) and detach.

client.Client adds the requests (load, pin, state, meta, counters); pin.Pin and
device.DevicePin use only what this module defines, so neither imports client.py
(client.py's module comment states the lifetime rules all three follow).
"""

import ctypes
import errno
import os
import threading
import weakref

from . import _native as N
from .errors import BusyError, ReleasedError, WeightdError, error_from_code

__all__ = ["Component", "Model", "TensorMeta"]


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


class _Lease:
    __slots__ = ("key", "count")

    def __init__(self, key):
        self.key = key
        self.count = 0


class _Handle:
    """One libweightd handle (one lease at the daemon) and this process's bookkeeping of it;
    the base of client.Client, which adds the requests."""

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

    def _component_name(self, model, meta):
        """The name of the component that holds tensor record @meta of @model."""
        cid = meta._info.component
        for m in self.models():
            for c in m.components:
                if c.id == cid:
                    return c.name
        raise error_from_code(-errno.ENOENT, "component %d of %s is not published"
                              % (cid, model), "load")

    # ---- pins (called by Pin and DevicePin) ----

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
            # Each map is a device.DeviceMap (device.unmap_all() does the same): an unmap
            # that fails leaves nothing to undo, and the others must still go.
            for dm in list(maps.values()):
                try:
                    dm.unmap()
                except Exception:
                    pass

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

