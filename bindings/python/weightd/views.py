"""Read-only numpy views of memory the binding does not own (host cache, file mappings).

Every array the binding returns is built the same way: a ctypes array placed over the bytes
(from_address, no copy), exported through a read-only memoryview (so numpy refuses to make the
array writable: the memory is a PROT_READ mapping), and carrying a _ViewOwner attribute. The
owner holds a strong reference to whatever keeps the memory mapped (a Pin, or a file
mapping), and the array's base chain holds the ctypes array, so:

  * as long as any array, slice or view of it is alive, the mapping and the pin are alive;
  * the keeper can count its live views exactly (a WeakSet of owners) and refuse to release
    the memory while one exists.
"""

import ctypes
import weakref

import numpy as np

from . import dtypes

__all__ = ["make_view", "tensor_dtype", "ViewCounter"]


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
