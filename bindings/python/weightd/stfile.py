"""A pure-Python safetensors reader: the fallback when no daemon serves a file.

It checks the same rules as the daemon's reader (core/format/st.c, DESIGN.md "safetensors,
exactly") and rejects a file with a MalformedFileError whose message names the file, the
rule (the stable names of core/format/st.h: "duplicate_key", "data_gap", ...), the tensor and the
byte offset in the file where one applies. Tensor data is not read at open: the file is
mapped read-only and each array is a read-only numpy view of the mapping (numpy.memmap's
technique without its writable default), so a tensor costs page faults only when touched.
"""

import errno
import json
import mmap
import os
import stat
import struct

import numpy as np

from . import dtypes
from .errors import MalformedFileError, WeightdError
from .views import ViewCounter, make_view
from .views import populate as populate_range

__all__ = ["STFile", "MAX_HEADER", "MAX_RANK", "open_regular"]

MAX_HEADER = 100_000_000
MAX_RANK = 16
_U64_LIMIT = 1 << 64


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def open_regular(path):
    """Opens @path for reading as a binary file object, the way core/base/file.h does: the open
    never blocks (a FIFO put where a model file was would otherwise hang this process until
    a writer comes), and anything but a regular file is refused with OSError(EINVAL)
    naming what it is."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            raise OSError(errno.EINVAL, "not a regular file (%s)" % kind, path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Entry:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end

    @property
    def nbytes(self):
        return self.end - self.begin


class _Duplicate(Exception):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _reject_constant(name):
    raise ValueError("%s is not JSON" % name)


def _is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _U64_LIMIT


class STFile:
    """One safetensors file, opened and checked.

    Attributes: ``path``, ``size`` (file bytes), ``header_len`` (N), ``header`` (the first
    8 + N bytes, for fingerprints), ``metadata`` (dict or None), ``entries`` (name -> entry
    with dtype, shape, begin, end; in file order of data).
    Raises MalformedFileError for a file that breaks the format, WeightdError (with the
    errno) when it cannot be opened or read.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._map = None
        self._cow_map = None
        try:
            with open_regular(self.path) as f:
                st = os.fstat(f.fileno())
                self.size = st.st_size
                head = f.read(8)
                n = self._check_prefix(head)
                body = f.read(n)
        except OSError as e:
            raise WeightdError(e.errno or 0, "%s: %s" % (self.path, e.strerror or e),
                               "open") from None
        self.header_len = n
        self.header = head + body
        self.metadata = None
        self.entries = {}
        self._parse(body)

    @classmethod
    def from_bytes(cls, data, name="<bytes>"):
        """The header of the safetensors file held in @data (bytes-like), checked with the
        same rules; @name stands for the path in messages. array() is not available (no
        file): the caller reads the tensors' bytes from @data itself."""
        self = cls.__new__(cls)
        self.path = name
        self._map = None
        self._cow_map = None
        mv = memoryview(data).cast("B")
        self.size = len(mv)
        head = bytes(mv[:8])
        n = self._check_prefix(head)
        body = bytes(mv[8:8 + n])
        self.header_len = n
        self.header = head + body
        self.metadata = None
        self.entries = {}
        self._parse(body)
        return self

    def _check_prefix(self, head):
        """N from the first 8 bytes @head, checked against the limits and self.size."""
        if len(head) < 8:
            self._fail("file_too_small", "%d bytes, fewer than the 8 of the length"
                       % self.size, offset=0)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            # N is the file's first 8 bytes: never quoted (docs/security.md).
            self._fail("header_too_large", "N is more than %d" % MAX_HEADER, offset=0)
        if 8 + n > self.size:
            self._fail("header_out_of_bounds", "8 + N exceeds the file size %d" % self.size,
                       offset=0)
        return n

    def _fail(self, rule, what, tensor=None, offset=None):
        where = ""
        if tensor is not None:
            where += ", tensor \"%s\"" % tensor
        if offset is not None:
            where += ", byte offset %d" % offset
        raise MalformedFileError(errno.EBADMSG, "%s: %s: %s%s" % (self.path, rule, what, where),
                                 "open")

    def _key_offset(self, body, key):
        pos = body.find(json.dumps(key, ensure_ascii=False).encode())
        return 8 + pos if pos >= 0 else 8

    def _parse(self, body):
        n = self.header_len
        if not body or body[:1] != b"{":
            self._fail("header_not_object_start", "the header does not start with '{'",
                       offset=8)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            self._fail("invalid_utf8", "the header is not UTF-8 (%s)" % e.reason,
                       offset=8 + e.start)
        try:
            root = json.loads(text, object_pairs_hook=_no_duplicates,
                              parse_constant=_reject_constant)
        except _Duplicate as e:
            self._fail("duplicate_key", "key \"%s\" appears twice" % e.key, tensor=e.key,
                       offset=self._key_offset(body, e.key))
        except json.JSONDecodeError as e:
            self._fail("invalid_json", e.msg, offset=8 + len(text[:e.pos].encode()))
        except ValueError as e:
            self._fail("invalid_json", str(e), offset=8)
        if not isinstance(root, dict):
            self._fail("header_not_object", "the header is not a JSON object", offset=8)
        ents = []
        for name, v in root.items():
            off = self._key_offset(body, name)
            if name == "__metadata__":
                if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                    self._fail("invalid_metadata", "__metadata__ is not a string->string map",
                               offset=off)
                self.metadata = dict(v)
                continue
            if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
                self._fail("invalid_entry", "an entry needs exactly dtype, shape and "
                           "data_offsets", tensor=name, offset=off)
            dt = v["dtype"]
            if not isinstance(dt, str) or dt not in dtypes.BITS:
                self._fail("invalid_dtype", "unknown dtype %r" % (dt,), tensor=name, offset=off)
            shape = v["shape"]
            if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
                self._fail("invalid_shape", "shape %r is not a list of non-negative integers"
                           % (shape,), tensor=name, offset=off)
            if len(shape) > MAX_RANK:
                self._fail("rank_too_large", "rank %d is more than %d" % (len(shape), MAX_RANK),
                           tensor=name, offset=off)
            offs = v["data_offsets"]
            if (not isinstance(offs, list) or len(offs) != 2 or not all(_is_uint(o) for o in offs)
                    or offs[0] > offs[1]):
                self._fail("invalid_offsets", "data_offsets %r is not [begin, end] with "
                           "begin <= end" % (offs,), tensor=name, offset=off)
            nelem = 1
            for d in shape:
                nelem *= d
            bits = nelem * dtypes.BITS[dt]
            if nelem >= _U64_LIMIT or bits >= _U64_LIMIT:
                self._fail("size_overflow", "%d elements of %s overflow 64 bits" % (nelem, dt),
                           tensor=name, offset=off)
            if bits % 8:
                self._fail("partial_byte", "%d elements of %d bits are not whole bytes"
                           % (nelem, dtypes.BITS[dt]), tensor=name, offset=off)
            if offs[1] - offs[0] != bits // 8:
                self._fail("size_mismatch", "data_offsets span %d bytes, shape and dtype need %d"
                           % (offs[1] - offs[0], bits // 8), tensor=name,
                           offset=8 + n + offs[0])
            ents.append(_Entry(name, dt, tuple(shape), offs[0], offs[1]))
        # The data must be tiled exactly: sorted by (begin, end), each starts where the last
        # ended. Zero-size tensors may sit anywhere inside or at the end of the data.
        ents.sort(key=lambda e: (e.begin, e.end))
        pos = 0
        for e in ents:
            if e.begin > pos:
                if pos == 0:
                    self._fail("data_not_at_zero", "the lowest begin is %d, not 0" % e.begin,
                               tensor=e.name, offset=8 + n + e.begin)
                self._fail("data_gap", "bytes [%d, %d) belong to no tensor" % (pos, e.begin),
                           tensor=e.name, offset=8 + n + pos)
            if e.begin < pos and e.end > e.begin:
                self._fail("data_overlap", "it starts at %d, inside the previous tensor that "
                           "ends at %d" % (e.begin, pos), tensor=e.name, offset=8 + n + e.begin)
            pos = max(pos, e.end)
        if 8 + n + pos != self.size:
            self._fail("file_size_mismatch", "8 + N + the end of the data is %d, the file has "
                       "%d bytes" % (8 + n + pos, self.size), offset=8 + n + pos)
        self.entries = {e.name: e for e in ents}

    # ---- data ----

    def _mapping(self, cow=False):
        if cow:
            if self._cow_map is None:
                self._cow_map = _FileMap(self.path, self.size, cow=True)
            return self._cow_map
        if self._map is None:
            self._map = _FileMap(self.path, self.size)
        return self._map

    def array(self, name, cow=False, populate=False):
        """A read-only numpy view of tensor @name's bytes in the file mapping (no copy); it
        keeps the mapping alive. KeyError when the file has no such tensor.
        @cow: a writable view of a private mapping instead (a write copies the page into this
        process; the file never changes). @populate: its pages are read in and mapped now, in
        one madvise(MADV_POPULATE_READ), not faulted in one by one later."""
        e = self.entries[name]
        m = self._mapping(cow)
        start = 8 + self.header_len + e.begin
        if populate and m.mm is not None and e.end > e.begin:
            populate_range(m.mm, start, e.end - e.begin)
        return make_view(m.address + start, e.dtype, e.shape, m, m.views, writable=cow)

    def live_views(self):
        """How many arrays of this file are alive."""
        return sum(len(m.views) for m in (self._map, self._cow_map) if m is not None)

    def close(self):
        """Drops this object's reference to the file mapping. Arrays still alive keep it
        mapped; it is unmapped when the last one is collected."""
        self._map = None
        self._cow_map = None


class _FileMap:
    """A read-only mapping of a whole file (with @cow a private writable one: copy-on-write). The numpy export of it pins the mmap object
    (mmap.close() is refused while it exists), so the memory stays mapped for as long as this
    object lives, and views keep this object alive."""

    __slots__ = ("mm", "_export", "address", "views", "__weakref__")

    def __init__(self, path, size, cow=False):
        access = mmap.ACCESS_COPY if cow else mmap.ACCESS_READ
        with open_regular(path) as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=access) if size else None
        if self.mm is not None:
            self._export = np.frombuffer(self.mm, dtype=np.uint8)
            self.address = self._export.__array_interface__["data"][0]
        else:
            self._export = None
            self.address = 0
        self.views = ViewCounter()
