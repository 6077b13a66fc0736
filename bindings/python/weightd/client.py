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
import os
import warnings

import numpy as np

from . import _native as N
from ._common import Component, Model, TensorMeta, _b, _Handle, _Lease
from .device import DevicePin, devices, trim
from .errors import (BusyError, GPUTierUnavailableError, NotSupportedError, ReleasedError,
                     error_from_code)
from .pin import Pin

__all__ = ["connect", "Client", "Pin", "Model", "Component", "TensorMeta"]

# The longest metadata value one META_GET reply carries (include/weightd.h).
_META_VALUE_MAX = 256


def _deprecated(old, new):
    warnings.warn("Client.%s() is deprecated, use Client.%s() (docs/names.md)" % (old, new),
                  DeprecationWarning, stacklevel=3)


class Client(_Handle):
    """A connection to the daemon (see connect()): the registry reads and the handle's
    plumbing come from _common._Handle, the requests are here."""

    # ---- requests ----

    def ping(self):
        self._call("ping", self._lib.weightd_ping)

    def state(self, model, component=None, tier="host"):
        """The daemon's state of @model (or @component) on @tier (the STATE op,
        weightd_state()): a dict with state ("absent", "loading", "resident", "evicting",
        "failed"), done and total bytes. NotFoundError for an unknown model or component."""
        fn = getattr(self._lib, "weightd_state", None) or self._lib.weightd_status
        st = N.Status()
        ret = self._call("state", fn, _b(model), _b(component), N.tier_number(tier),
                         ctypes.byref(st))
        name = N.STATE_NAMES[ret] if ret < len(N.STATE_NAMES) else "?"
        return {"state": name, "done": st.done, "total": st.total}

    def status(self, model, component=None, tier="host"):
        """Deprecated name of state() (docs/names.md: `weightctl status` is whether the
        daemon is up; one target's state is STATE in every layer)."""
        _deprecated("status", "state")
        return self.state(model, component, tier)

    # ---- metadata (META_GET, META_SET) ----

    def meta_get(self, model, key):
        """The value (str) of metadata @key of @model (weightd_meta_get()). NotFoundError
        when the model or the key does not exist; a WeightdError with EOVERFLOW when the
        value is longer than one reply carries (256 bytes: `weightctl meta get` reads it from
        the catalog)."""
        buf = ctypes.create_string_buffer(_META_VALUE_MAX + 1)
        n = self._call("meta_get", self._lib.weightd_meta_get, _b(model), _b(key), buf,
                       len(buf))
        return buf.raw[:n].decode("utf-8", "replace")

    def meta_set(self, model, key, value):
        """Sets metadata @key of @model to @value (str; weightd_meta_set(), kept in the
        catalog across rescans). NotFoundError for an unknown model; a WeightdError with
        ENAMETOOLONG when the key and value together take more than 254 bytes, EILSEQ when
        they are not valid UTF-8."""
        self._call("meta_set", self._lib.weightd_meta_set, _b(model), _b(key), _b(value))

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
            return DevicePin(self, key, 0)
        return Pin(self, key, None)

    def devices(self):
        """The daemon's GPUs and, when it has none, why: (list of dicts, reason); see
        weightd.device.devices()."""
        return devices(self)

    def device_trim(self, device, nbytes):
        """Asks the daemon for @nbytes of room on its GPU cuda:@device (unpinned, unmapped
        components evicted); returns the bytes freed. weightd.device.trim()."""
        return trim(self, device, nbytes)

    def host_stats(self):
        """The host tier's counters (weightd_host_stats(); dict: budget, bytes, entries,
        hits, misses, evictions, loads, read_bytes (of which read_direct_bytes with O_DIRECT,
        read_buffered_bytes through the page cache), coalesced, dedup_bytes, mapped_bytes,
        ...). NotSupportedError with a libweightd that has no host tier."""
        fn = getattr(self._lib, "weightd_host_stats", None) or \
            getattr(self._lib, "weightd_cache_stats", None)
        if fn is None:
            raise NotSupportedError(errno.ENOTSUP, "this libweightd has no host-tier counters "
                                    "(weightd_host_stats)", "host_stats")
        st = N.CacheStats()
        self._call("host_stats", fn, ctypes.byref(st))
        return {n: getattr(st, n) for n in N.CACHE_STATS_FIELDS}

    def cache_stats(self):
        """Deprecated name of host_stats() (docs/names.md: these are the host tier's
        counters of the STATS reply, not the CACHE op)."""
        _deprecated("cache_stats", "host_stats")
        return self.host_stats()

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
