"""Read-only numpy views of memory the binding does not own (host cache, file mappings).

Every array the binding returns is built the same way: a ctypes array placed over the bytes
(from_address, no copy), exported through a read-only memoryview (so numpy refuses to make the
array writable: the memory is a PROT_READ mapping), and carrying a _ViewOwner attribute. The
owner holds a strong reference to whatever keeps the memory mapped (a Pin, or a file
mapping), and the array's base chain holds the ctypes array, so:

  * as long as any array, slice or view of it is alive, the mapping and the pin are alive;
  * the keeper can count its live views exactly (a WeakSet of owners) and refuse to release
    the memory while one exists.

A pin that hands out many views (every tensor of a model) pays for one such ctypes array per
dtype instead of one per view: make_base() places a read-only uint8 array over the pin's
whole extent, and each view is np.ndarray(shape, dtype, buffer=base, offset) — one numpy
constructor. numpy makes `base` the .base of each such view and of every slice or numpy view
of it, so the views of a base are exactly the references to it that the ViewSet does not
hold (it keeps only a weak reference): sys.getrefcount counts them with no per-view
bookkeeping, and the base, its owner and so the pin live exactly as long as one view does.
"""

import ctypes
import sys
import weakref

import numpy as np

from . import dtypes

__all__ = ["make_view", "make_base", "tensor_dtype", "ViewCounter", "ViewSet"]


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
    ViewCounter does) plus views over the bases of make_base(), one base per dtype, held
    weakly: every reference to a base beyond the weak one is a view (module comment)."""

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


def make_base(address, nbytes, dtype_name, keeper):
    """A read-only uint8 array of @nbytes (>= 1) over the memory at @address, whose owner keeps
    @keeper alive and names safetensors dtype @dtype_name (for tensor_dtype() of the views
    built over it)."""
    owner = _ViewOwner(keeper, dtype_name)
    carr = (ctypes.c_char * nbytes).from_address(address)
    carr._wd_owner = owner
    return np.frombuffer(memoryview(carr).toreadonly(), dtype=np.uint8)


def make_view(address, dtype_name, shape, keeper, counter):
    """A read-only ndarray of safetensors dtype @dtype_name and @shape over the memory at
    @address (an int). @keeper is kept alive by the array; @counter counts it."""
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
    arr = np.frombuffer(memoryview(carr).toreadonly(), dtype=npdt, count=count)
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
