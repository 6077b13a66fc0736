"""ctypes mirror of include/weightd.h and the loading of libweightd.

The structs below repeat the C layouts field for field (ctypes applies the same natural
alignment as the C compiler); tests/python/test_abi.py compiles a C program that prints
sizeof/offsetof of the real structs and compares them with these.

Where the library comes from, first match wins:
  1. $WEIGHTD_LIB (a path to libweightd.so);
  2. $WD_BUILD/libweightd.so (the test harness sets WD_BUILD to the build directory);
  3. build/libweightd.so of the source tree this package sits in (bindings/python/weightd);
  4. the system's libweightd.so.1 (ld.so search path).
A library built with AddressSanitizer (make SAN=1) needs the ASan runtime loaded first, which
a plain python cannot do after start-up: it is refused with a LibraryUnavailableError that says
to run python with LD_PRELOAD of libasan, rather than aborting the interpreter.
"""

import ctypes
import os
import struct
import threading

from .errors import LibraryUnavailableError

TIER_HOST = 0
TIER_MAX = 16
LOAD_PIN = 0x01
LOAD_NO_PROGRESS = 0x02
VALIDATE_DEEP = 0x1
MODEL_STALE = 0x1
NAME_MAX = 256  # WEIGHTD_NAME_MAX: bytes per name in weightd_tensor_list()

STATE_NAMES = ["absent", "loading", "resident", "evicting", "failed"]

c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64
c_i32 = ctypes.c_int32


class AttachOpts(ctypes.Structure):
    _fields_ = [
        ("spin_us", c_u32),
        ("sq_entries", c_u32),
        ("cq_entries", c_u32),
        ("client_name", ctypes.c_char_p),
        ("attach_timeout_ms", c_u32),
        ("request_timeout_ms", c_u32),
        ("daemon_uid", c_u32),
    ]


class ModelInfo(ctypes.Structure):
    _fields_ = [
        ("id", c_u32),
        ("n_components", c_u32),
        ("n_tensors", c_u32),
        ("flags", c_u32),
        ("pins", c_u32),
        ("nbytes", c_u64),
        ("fingerprint", c_u64),
        ("name", ctypes.c_char * 256),
        ("arch", ctypes.c_char * 32),
    ]


class TierState(ctypes.Structure):
    _fields_ = [("state", c_u32), ("error", c_i32), ("done", c_u64), ("total", c_u64)]


class ComponentInfo(ctypes.Structure):
    _fields_ = [
        ("id", c_u32),
        ("model", c_u32),
        ("n_tensors", c_u32),
        ("nbytes", c_u64),
        ("fingerprint", c_u64),
        ("name", ctypes.c_char * 256),
        ("tiers", TierState * TIER_MAX),
    ]


class TensorInfo(ctypes.Structure):
    _fields_ = [
        ("id", c_u32),
        ("model", c_u32),
        ("component", c_u32),
        ("dtype", c_u32),
        ("dtype_name", ctypes.c_char * 16),
        ("rank", c_u32),
        ("shape", c_u64 * 16),
        ("nbytes", c_u64),
        ("resident", c_u32),
        ("host_state", c_u32),
        ("host_offset", c_u64),
    ]


class Status(ctypes.Structure):
    _fields_ = [("state", c_u32), ("done", c_u64), ("total", c_u64)]


STATS_FIELDS = [
    "requests", "errors", "pins", "clients", "ring_segments", "pins_total", "models",
    "uptime_ns", "host_budget", "host_bytes", "requests_total", "errors_total", "loads",
    "load_bytes", "evictions", "evict_bytes", "hits", "misses",
]


class Stats(ctypes.Structure):
    _fields_ = [(n, c_u64) for n in STATS_FIELDS] + [("n_values", c_u32),
                                                      ("host_page_kind", c_u32),
                                                      ("host_page_size", c_u64)]


# weightd_stats.host_page_kind (WEIGHTD_PAGES_*).
PAGE_KINDS = {0: "4k", 1: "thp", 2: "hugetlb"}


class LoadOpts(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_uint),
        ("prefix", ctypes.c_char_p),
        ("names", ctypes.POINTER(ctypes.c_char_p)),
        ("n_names", ctypes.c_size_t),
    ]


class LoadResult(ctypes.Structure):
    _fields_ = [("bytes", c_u64), ("read_bytes", c_u64), ("hit", ctypes.c_int),
                ("elapsed_ns", c_u64)]


CACHE_STATS_FIELDS = [
    "budget", "bytes", "entries", "hits", "misses", "evictions", "evict_bytes", "prefetches",
    "prefetch_hits", "loads", "read_bytes", "coalesced", "dedup_bytes", "refused", "failed",
    "cuda_bytes", "mapped_bytes", "read_direct_bytes", "read_buffered_bytes",
]


class CacheStats(ctypes.Structure):
    _fields_ = [(n, c_u64) for n in CACHE_STATS_FIELDS]


class TensorLoc(ctypes.Structure):
    _fields_ = [
        ("offset", c_u64),
        ("nbytes", c_u64),
        ("dtype", c_u32),
        ("rank", c_u32),
        ("name_off", c_u32),
        ("name_len", c_u32),
        ("shape", c_u64 * 16),
    ]


class TensorTable(ctypes.Structure):
    _fields_ = [
        ("base", ctypes.c_void_p),
        ("nbytes", c_u64),
        ("host_offset", c_u64),
        ("host_fd", c_i32),
        ("n", c_u32),
        ("absent", c_u32),
        ("n_components", c_u32),
        ("names_len", c_u64),
    ]


DTYPE_F16 = 9
DTYPE_BF16 = 10

DEVICE_CUDA = 0  # weightd_device_info.kind
DEVICE_EMULATED = 1


class CacheEntry(ctypes.Structure):
    _fields_ = [
        ("model", c_u32),
        ("component", c_u32),
        ("bytes", c_u64),
        ("idle_ns", c_u64),
        ("pins", c_u32),
        ("dtype", c_u32),
        ("flags", c_u32),
        ("n_tensors", c_u32),
        ("model_name", ctypes.c_char * 256),
        ("component_name", ctypes.c_char * 256),
    ]


class DeviceInfo(ctypes.Structure):
    _fields_ = [
        ("ordinal", c_u32),
        ("kind", c_u32),
        ("numa_node", c_i32),
        ("entries", c_u32),
        ("total_bytes", c_u64),
        ("budget", c_u64),
        ("used", c_u64),
        ("hits", c_u64),
        ("misses", c_u64),
        ("evictions", c_u64),
        ("evict_bytes", c_u64),
        ("load_bytes", c_u64),
        ("name", ctypes.c_char * 40),
        ("flags", c_u32),
        ("fixed_err", ctypes.c_int16),
        ("locked_err", ctypes.c_int16),
    ]

PROGRESS_FN = ctypes.CFUNCTYPE(None, c_u64, c_u64, ctypes.c_void_p)

_P = ctypes.c_void_p
_S = ctypes.c_char_p
_PROTOS = {
    "weightd_last_error": (_S, []),
    "weightd_attach": (ctypes.c_int, [_S, ctypes.POINTER(AttachOpts), ctypes.POINTER(_P)]),
    "weightd_detach": (None, [_P]),
    "weightd_socket_path": (_S, [_P]),
    "weightd_client_id": (c_u32, [_P]),
    "weightd_daemon_pid": (ctypes.c_int, [_P]),
    "weightd_fd": (ctypes.c_int, [_P]),
    "weightd_ping": (ctypes.c_int, [_P]),
    "weightd_lookup": (ctypes.c_int, [_P, _S, ctypes.POINTER(c_u32)]),
    "weightd_model": (ctypes.c_int, [_P, c_u32, ctypes.POINTER(ModelInfo)]),
    "weightd_component": (ctypes.c_int, [_P, c_u32, ctypes.POINTER(ComponentInfo)]),
    "weightd_tensor": (ctypes.c_int, [_P, _S, _S, _S, ctypes.POINTER(TensorInfo)]),
    "weightd_load": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint, ctypes.c_uint, PROGRESS_FN,
                                    ctypes.c_void_p]),
    "weightd_unload": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint]),
    "weightd_pin": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint]),
    "weightd_unpin": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint]),
    "weightd_status": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint, ctypes.POINTER(Status)]),
    "weightd_scan": (ctypes.c_int, [_P, _S, PROGRESS_FN, ctypes.c_void_p]),
    "weightd_validate": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint, PROGRESS_FN,
                                        ctypes.c_void_p]),
    "weightd_meta_get": (ctypes.c_int, [_P, _S, _S, ctypes.c_char_p, ctypes.c_size_t]),
    "weightd_meta_set": (ctypes.c_int, [_P, _S, _S, _S]),
    "weightd_stats": (ctypes.c_int, [_P, ctypes.POINTER(Stats)]),
    "weightd_shutdown": (ctypes.c_int, [_P]),
    "weightd_state_name": (_S, [ctypes.c_uint]),
}
# Present only in builds with the host-tier loader: the address of a resident tensor's bytes
# in this process's read-only mapping of the host cache.
_OPTIONAL = {
    "weightd_tensor_data": (ctypes.c_void_p, [_P, ctypes.POINTER(TensorInfo)]),
    "weightd_tensor_list": (ctypes.c_int, [_P, _S, _S, ctypes.c_void_p, ctypes.c_void_p, c_u32]),
    "weightd_load_ex": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint, ctypes.c_uint,
                                       ctypes.POINTER(LoadOpts), PROGRESS_FN, ctypes.c_void_p,
                                       ctypes.POINTER(LoadResult)]),
    "weightd_cache_stats": (ctypes.c_int, [_P, ctypes.POINTER(CacheStats)]),
    # The names of docs/names.md, in a libweightd that has them (else the deprecated ones
    # above: weightd_status, weightd_cache_stats). Same structs.
    "weightd_state": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint, ctypes.POINTER(Status)]),
    "weightd_host_stats": (ctypes.c_int, [_P, ctypes.POINTER(CacheStats)]),
    # Buffers are passed as addresses (numpy arrays' data pointers): no ctypes array objects.
    "weightd_tensor_table": (ctypes.c_int, [_P, _S, _S, ctypes.c_void_p, c_u32, ctypes.c_void_p,
                                            ctypes.c_size_t, ctypes.POINTER(TensorTable)]),
    # The GPU tier (include/weightd.h, "the GPU tier"); weightd/device.py uses them. Maps are
    # opaque pointers; tensor infos are passed by address.
    "weightd_device_map_opts": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint,
                                               ctypes.POINTER(LoadOpts), ctypes.POINTER(_P)]),
    # Deprecated (docs/names.md): used only with a libweightd that has no _opts.
    "weightd_device_map_ex": (ctypes.c_int, [_P, _S, _S, ctypes.c_uint, ctypes.c_uint,
                                             ctypes.POINTER(_P)]),
    "weightd_device_base": (c_u64, [_P]),
    "weightd_device_ordinal": (ctypes.c_int, [_P]),
    "weightd_device_size": (c_u64, [_P]),
    "weightd_tensor_device_info": (ctypes.c_int, [_P, _P, ctypes.POINTER(c_u64),
                                                  ctypes.POINTER(ctypes.c_uint),
                                                  ctypes.POINTER(c_u64)]),
    "weightd_device_read": (ctypes.c_int, [_P, _P, _P, ctypes.c_size_t]),
    "weightd_device_unmap": (None, [_P, _P]),
    "weightd_devices": (ctypes.c_int, [_P, _P, ctypes.c_uint, ctypes.c_char_p, ctypes.c_size_t]),
    "weightd_device_trim": (ctypes.c_int64, [_P, ctypes.c_uint, c_u64]),
    "weightd_cache_list": (ctypes.c_int, [_P, c_u32, _P, c_u32, ctypes.POINTER(c_u32)]),
}

_lock = threading.Lock()
_lib = None
_lib_error = None
_lib_path = None


def _pkg_build_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "..", "build"))


def candidates():
    """The library paths tried, in order (see the module comment). A generator: the system
    search (find_library runs ldconfig) happens only when the others failed."""
    env = os.environ.get("WEIGHTD_LIB")
    if env:
        yield env
    build = os.environ.get("WD_BUILD")
    if build:
        yield os.path.join(build, "libweightd.so")
    yield os.path.join(_pkg_build_dir(), "libweightd.so")
    import ctypes.util  # here, not at the top: it imports subprocess and shutil (~4 ms)
    yield ctypes.util.find_library("weightd") or "libweightd.so.1"


_ELF_HDR = struct.Struct("<16sHHIQQQIHHHHHH")
_ELF_PHDR = struct.Struct("<IIQQQQQQ")
_ELF_DYN = struct.Struct("<qQ")
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ = 0, 1, 5, 10


def _elf_needed(fd):
    """The DT_NEEDED names of the 64-bit little-endian ELF shared object open as @fd, read
    from its dynamic section (two or three small preads, not the whole file); None when it
    is not such an object or its dynamic section does not parse."""
    # The ELF and program headers sit at the start; the dynamic section and its string
    # table are read where they are. 4 KiB: a larger first read cost more than it saved.
    head = os.pread(fd, 4096, 0)

    def read(off, n):
        if off + n <= len(head):
            return head[off:off + n]
        return os.pread(fd, n, off)

    if len(head) < _ELF_HDR.size or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    (_, _, _, _, _, phoff, _, _, _, phentsize, phnum, _, _, _) = _ELF_HDR.unpack_from(head)
    if phentsize < _ELF_PHDR.size or not 0 < phnum <= 64:
        return None
    raw = read(phoff, phentsize * phnum)
    if len(raw) != phentsize * phnum:
        return None
    loads, dyn = [], None
    for i in range(phnum):
        ptype, _, off, vaddr, _, filesz, _, _ = _ELF_PHDR.unpack_from(raw, i * phentsize)
        if ptype == _PT_LOAD:
            loads.append((vaddr, filesz, off))
        elif ptype == _PT_DYNAMIC:
            dyn = (off, filesz)
    if dyn is None or not 0 < dyn[1] <= 1 << 20:
        return None
    raw = read(dyn[0], dyn[1])
    needed, strtab, strsz = [], None, None
    for tag, val in _ELF_DYN.iter_unpack(raw[:len(raw) // _ELF_DYN.size * _ELF_DYN.size]):
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            needed.append(val)
        elif tag == _DT_STRTAB:
            strtab = val
        elif tag == _DT_STRSZ:
            strsz = val
    if strtab is None or strsz is None or not 0 < strsz <= 1 << 24:
        return None
    # DT_STRTAB is an address: the PT_LOAD segment that holds it gives its file offset.
    for vaddr, filesz, off in loads:
        if vaddr <= strtab and strtab + strsz <= vaddr + filesz:
            strs = read(strtab - vaddr + off, strsz)
            break
    else:
        return None
    if len(strs) != strsz:
        return None
    return [strs[v:strs.find(b"\0", v)] for v in needed if v < strsz]


def asan_instrumented(path):
    """True when the shared object at @path needs the ASan runtime (built with make SAN=1):
    libasan is among the libraries it was linked against. Reads the ELF dynamic section
    only; a file that is not a 64-bit little-endian ELF object is searched whole instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    return _fd_asan_instrumented(fd)


def _fd_asan_instrumented(fd):
    """asan_instrumented() of the object open as @fd, which it closes."""
    try:
        needed = _elf_needed(fd)
        if needed is not None:
            return any(n.startswith(b"libasan.so") for n in needed)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    except (OSError, struct.error, ValueError):
        return False
    finally:
        os.close(fd)
    return b"libasan.so" in data or b"__asan_init" in data


def _asan_loaded():
    """True when the ASan runtime is already in this process (python started with it in
    LD_PRELOAD): its __asan_init is then found by a dlsym over the loaded objects."""
    try:
        return hasattr(ctypes.CDLL(None), "__asan_init")
    except OSError:
        return False


class _Lib:
    """libweightd with its prototypes set on first use, not at load: a process that calls
    five functions pays for five (each a dlsym and a ctypes function object), and importing
    the binding stays cheap. An optional function the library lacks reads as absent
    (getattr(lib, name, None) is None); a required one raises LibraryUnavailableError."""

    def __init__(self, cdll, path):
        self._cdll = cdll
        self._path = path

    def __getattr__(self, name):
        proto = _PROTOS.get(name) or _OPTIONAL.get(name)
        if proto is None or name.startswith("_"):
            raise AttributeError(name)
        try:
            fn = getattr(self._cdll, name)
        except AttributeError:
            if name in _OPTIONAL:
                raise
            raise LibraryUnavailableError(0, "%s lacks %s: not a libweightd of this API"
                                          % (self._path, name), "load libweightd") from None
        fn.restype, fn.argtypes = proto
        setattr(self, name, fn)
        return fn


def _open(path):
    if os.path.sep in path:
        # One open both proves the file there and reads its ELF header (no separate stat);
        # the dlsym over every loaded object (_asan_loaded) runs only for an ASan build.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None, "%s does not exist" % path
        except OSError as e:
            return None, "%s: %s" % (path, e)
        if _fd_asan_instrumented(fd) and not _asan_loaded():
            return None, ("%s is built with AddressSanitizer: run python with "
                          "LD_PRELOAD=$(cc -print-file-name=libasan.so), or point "
                          "WEIGHTD_LIB at a release build" % path)
    try:
        cdll = ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        return None, "%s: %s" % (path, e)
    # Two symbols every libweightd of this API has: anything else is refused here, at load.
    # The other prototypes are checked when first used (_Lib).
    for name in ("weightd_attach", "weightd_last_error"):
        if not hasattr(cdll, name):
            return None, "%s lacks %s: not a libweightd of this API" % (path, name)
    return _Lib(cdll, path), None


def lib():
    """The loaded libweightd; raises LibraryUnavailableError (with every reason) if none."""
    global _lib, _lib_error, _lib_path
    with _lock:
        if _lib is not None:
            return _lib
        if _lib_error is not None:
            raise LibraryUnavailableError(0, _lib_error, "load libweightd")
        reasons = []
        for path in candidates():
            handle, why = _open(path)
            if handle is not None:
                _lib, _lib_path = handle, path
                return _lib
            reasons.append(why)
            # An explicit choice that fails is final: falling through to another build would
            # silently test or run something the caller did not ask for.
            if path == os.environ.get("WEIGHTD_LIB"):
                break
            if os.environ.get("WD_BUILD") and path == os.path.join(
                    os.environ["WD_BUILD"], "libweightd.so"):
                break
        _lib_error = "no usable libweightd: " + "; ".join(reasons)
        raise LibraryUnavailableError(0, _lib_error, "load libweightd")


def lib_path():
    """The path of the loaded library (None before the first successful lib())."""
    return _lib_path


def has_tensor_data():
    """True when the loaded library exports weightd_tensor_data (the host-tier loader)."""
    return getattr(lib(), "weightd_tensor_data", None) is not None


def last_error():
    msg = lib().weightd_last_error()
    return msg.decode("utf-8", "replace") if msg else ""


def tier_number(tier):
    """"host" -> 0, "cuda:N" -> 1 + N; an int passes through. ValueError otherwise."""
    if isinstance(tier, int) and not isinstance(tier, bool):
        t = tier
    elif tier == "host" or tier == "cpu":
        t = TIER_HOST
    elif isinstance(tier, str) and (tier.startswith("cuda:") or tier == "cuda"):
        idx = tier[5:] or "0"
        if not idx.isdigit():
            raise ValueError("bad tier %r: use \"host\" or \"cuda:N\"" % tier)
        t = 1 + int(idx)
    else:
        raise ValueError("bad tier %r: use \"host\" or \"cuda:N\"" % (tier,))
    if not 0 <= t < TIER_MAX:
        raise ValueError("tier %r is out of range (host, cuda:0 .. cuda:%d)"
                         % (tier, TIER_MAX - 2))
    return t


def tier_name(t):
    return "host" if t == TIER_HOST else "cuda:%d" % (t - 1)
