"""Read-only numpy views of memory the binding does not own (host cache, file mappings).

Two kinds of base keep the memory mapped for as long as a view of it exists:

  * A pin's views (Pin.tensors(), Pin.tensor()) are np.ndarray(shape, dtype, buffer=base,
    offset) over map_base(): a read-only mmap (a _HostMap) of the pin's extent of the host
    cache, one per dtype, carrying a _ViewOwner that holds the Pin. Its buffer export is
    read-only, so numpy refuses to make a view writable. numpy makes the mapping the .base of
    each view, and a slice or numpy view of a view holds that view, so every reference to a
    base but the ViewSet's (a weak one) is a live view, directly or through its slices:
    sys.getrefcount counts them with no per-view bookkeeping, and the mapping, its owner and
    so the pin live exactly as long as one view does. (numpy exports an mmap's buffer faster
    than a numpy array's: 0.13 vs 0.23 us per view.)
  * make_view() places a ctypes array over the bytes (from_address, no copy), exported
    through a read-only memoryview, with a _ViewOwner attribute; the keeper counts its live
    views exactly (a WeakSet of owners). The file path (stfile) and single lookups by name use
    it.
"""

import ctypes
import mmap
import sys
import weakref

import numpy as np

from . import dtypes

__all__ = ["make_view", "map_base", "populate", "tensor_dtype", "ViewCounter", "ViewSet"]

# madvise(MADV_POPULATE_READ) (Linux 5.14): maps every page of a range in one call. Python's
# mmap module names it only when it was built on a kernel that had it; the number is ABI.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_PAGE = mmap.PAGESIZE


class _ViewOwner:
    __slots__ = ("keeper", "dtype_name", "__weakref__")

    def __init__(self, keeper, dtype_name):
        self.keeper = keeper
        self.dtype_name = dtype_name


class ViewCounter:
    """Counts the live views handed out by one keeper."""

    __slots__ = ("_owners",)

    def __init__(self):
        self._owners = weakref.WeakSet()

    def add(self, owner):
        self._owners.add(owner)

    def __len__(self):
        return len(self._owners)


class ViewSet(ViewCounter):
    """Counts the live views of one pin: views made by make_view() (their owners, as
    ViewCounter does) plus views over the bases of map_base() (one per dtype and extent),
    held weakly: every reference to a base beyond the weak one is a view (module comment)."""

    __slots__ = ("bases",)

    def __init__(self):
        ViewCounter.__init__(self)
        self.bases = {}

    def __len__(self):
        n = len(self._owners)
        for ref in list(self.bases.values()):
            b = ref()
            if b is not None:
                # getrefcount's own argument and the local `b` are the two to discount.
                n += sys.getrefcount(b) - 2
        return n


class _HostMap(mmap.mmap):
    """A read-only mapping of a pin's extent of the host cache, the base of its views
    (map_base()). Its buffer export is read-only, so numpy refuses to make a view writable;
    it carries the owner that keeps the pin alive. It is unmapped when the last reference
    (the last view) goes: close() is refused, since views would point at unmapped memory."""

    __slots__ = ("_wd_owner",)

    def close(self):
        raise BufferError("a weightd host-cache mapping is unmapped when its last view goes")

    def __exit__(self, *exc):
        self.close()


def map_base(fd, offset, nbytes, dtype_name, keeper, cow=False):
    """A read-only mapping (mmap, shared) of @nbytes (>= 1) of the host cache behind @fd from
    @offset (a multiple of the page size): the base of views made with np.ndarray(shape,
    dtype, buffer=base, offset=...). Its owner keeps @keeper alive and names safetensors dtype
    @dtype_name. The mapping is O(1): no byte is read until a view is used. mmap checks that
    the range lies inside the file (OSError/ValueError otherwise).
    With @cow the mapping is private and writable instead (MAP_PRIVATE, PROT_READ|PROT_WRITE):
    reads share the cache's pages, a write copies the page it touches into this process only
    (copy-on-write), so the shared cache never changes. The sealed memfd allows that: its
    seals refuse only shared writable mappings. Views over it are writable (torch's case)."""
    if cow:
        base = _HostMap(fd, nbytes, flags=mmap.MAP_PRIVATE,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
    else:
        base = _HostMap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=offset)
    base._wd_owner = _ViewOwner(keeper, dtype_name)
    return base


def populate(mm, start=0, length=None):
    """Maps the pages of [@start, @start + @length) of mmap @mm (default: all of it) into this
    process in one madvise(MADV_POPULATE_READ) instead of one page fault per 4 KiB page when
    the views are first read. Best effort: a kernel without it (before 5.14) or a range that
    cannot be read leaves the pages to fault in as before."""
    size = len(mm)
    if length is None:
        length = size - start
    if length <= 0 or size == 0:
        return
    lo = start - start % _PAGE
    hi = min(size, start + length)
    try:
        mm.madvise(MADV_POPULATE_READ, lo, hi - lo)
    except (OSError, ValueError):
        pass


def make_view(address, dtype_name, shape, keeper, counter, writable=False):
    """A read-only ndarray of safetensors dtype @dtype_name and @shape over the memory at
    @address (an int). @keeper is kept alive by the array; @counter counts it. @writable: a
    writable one, for memory the caller mapped privately (copy-on-write)."""
    npdt = dtypes.NUMPY[dtype_name]
    ashape = dtypes.array_shape(dtype_name, shape)
    count = 1
    for d in ashape:
        count *= d
    nbytes = count * npdt.itemsize
    owner = _ViewOwner(keeper, dtype_name)
    counter.add(owner)
    # A zero-byte tensor has no address to point at; ctypes needs a length >= 1 anyway.
    carr = (ctypes.c_char * max(nbytes, 1)).from_address(address)
    carr._wd_owner = owner
    mv = memoryview(carr) if writable else memoryview(carr).toreadonly()
    arr = np.frombuffer(mv, dtype=npdt, count=count)
    return arr.reshape(ashape)


def tensor_dtype(array):
    """The safetensors dtype name ("BF16", "F8_E4M3", ...) of an array the binding returned,
    or of any slice or view of one. Arrays that numpy computed (new memory) have none:
    ValueError."""
    obj = array
    for _ in range(64):
        if isinstance(obj, memoryview):
            obj = obj.obj
            continue
        owner = getattr(obj, "_wd_owner", None)
        if owner is not None:
            return owner.dtype_name
        base = getattr(obj, "base", None)
        if base is None:
            break
        obj = base
    raise ValueError("this array was not returned by weightd (or is a copy of one)")
