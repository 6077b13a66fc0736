"""Pins of the host tier and their zero-copy views: Pin, the table of a pin's tensor
locations (_read_table: one registry pass per load epoch) and the mapping of its extent that
the views share (see client.py's module comment for the lifetime rules)."""

import ctypes
import errno
import gc
import itertools
import operator
import weakref

import numpy as np

from . import _native as N
from . import dtypes
from ._common import _b, _s
from .errors import (BusyError, GPUTierUnavailableError, NotSupportedError, ReleasedError,
                     WeightdError, error_from_code)
from .views import ViewSet, make_view, map_base
from .views import populate as views_populate

__all__ = ["Pin"]


def _gpu_unavailable(what):
    return GPUTierUnavailableError(
        errno.ENOTSUP,
        "%s: a host-tier Pin gives no CUDA tensors; load or pin with tier=\"cuda:N\" for "
        "device tensors (weightd.device)" % what, "tensor")


_TENSOR_DATA = []


def _tensor_data_fn(lib):
    if not _TENSOR_DATA:
        _TENSOR_DATA.append(getattr(lib, "weightd_tensor_data", None))
    return _TENSOR_DATA[0]


def _convert(arr, st_dtype, target):
    """A copy of @arr (safetensors dtype @st_dtype) converted to numpy dtype @target."""
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
