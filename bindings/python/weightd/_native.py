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
import ctypes.util
import os
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
    _fields_ = [(n, c_u64) for n in STATS_FIELDS] + [("n_values", c_u32)]


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
    "cuda_bytes", "mapped_bytes",
]


class CacheStats(ctypes.Structure):
    _fields_ = [(n, c_u64) for n in CACHE_STATS_FIELDS]


DTYPE_F16 = 9
DTYPE_BF16 = 10

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
    yield ctypes.util.find_library("weightd") or "libweightd.so.1"


def asan_instrumented(path):
    """True when the shared object at @path needs the ASan runtime (built with make SAN=1)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    return b"libasan.so" in data or b"__asan_init" in data


def _asan_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "libasan" in f.read()
    except OSError:
        return False


def _open(path):
    if os.path.sep in path:
        if not os.path.exists(path):
            return None, "%s does not exist" % path
        if asan_instrumented(path) and not _asan_loaded():
            return None, ("%s is built with AddressSanitizer: run python with "
                          "LD_PRELOAD=$(cc -print-file-name=libasan.so), or point "
                          "WEIGHTD_LIB at a release build" % path)
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError as e:
        return None, "%s: %s" % (path, e)
    for name, (res, args) in _PROTOS.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            return None, "%s lacks %s: not a libweightd of this API" % (path, name)
        fn.restype = res
        fn.argtypes = args
    for name, (res, args) in _OPTIONAL.items():
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = res
            fn.argtypes = args
    return lib, None


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
