"""The GPU tier in Python: device pins, device tensors, and their DLPack export.

Client.load(model, tier="cuda:N") (and Client.pin(..., tier="cuda:N")) return a DevicePin.
It holds one weightd_device_map() per (component, form) -- the daemon's VRAM allocation
imported into this process with the daemon's own device layer -- shared by every Pin of the
same target on the Client and unmapped when the last of them is released or collected (the
daemon's lease drops the reference anyway when the process dies). Its tensors are
DeviceTensor objects: the device address (data_ptr), a host copy (numpy(), through
weightd_device_read), and the DLPack protocol (__dlpack__/__dlpack_device__), so
torch.from_dlpack(t) gives a CUDA tensor over the shared allocation with no copy.

Lifetime rules, on top of the host tier's (client.py):

* A DeviceTensor keeps its Pin alive; after the Pin is released, every use of it raises
  ReleasedError (the check runs under the client's lock, which release() takes too), so no
  call ever reads an unmapped allocation.
* A DLPack export (a capsule, and the framework tensor made from it) holds the Pin until the
  framework calls the capsule's deleter; until then it counts as a live view: release() and
  Client.close() raise BusyError, as they do for live numpy views of the host tier.
* The memory is shared with every other process that maps the component, and is mapped
  writable (CUDA VMM access, or the emulated device's shared memfd): writing through a
  framework tensor changes every reader's copy. Treat the tensors as read-only.

The emulated device ($WEIGHTD_GPU_EMULATE in the daemon's and this process's environment,
gpu/device.h) keeps "VRAM" in host memory: its tensors report the DLPack device kDLCPU, not
kDLCUDA, so a framework never treats host memory as device memory.

A tensor's dtype and size on the device come from the mapping's own table
(weightd_tensor_device_info), not from the registry record, which describes the host tier's
copy: the two differ when one of them is a converted copy.
"""

import ctypes
import errno
import threading

import numpy as np

from . import _native as N
from . import dtypes
from ._common import _b, _s
from .errors import (GPUTierUnavailableError, NotSupportedError, ReleasedError, WeightdError,
                     error_from_code)
from .pin import Pin

__all__ = ["DevicePin", "DeviceTensor", "devices", "trim", "KDL_CPU", "KDL_CUDA",
           "DLPACK_DTYPES"]

KDL_CPU = 1
KDL_CUDA = 2

# safetensors dtype -> (DLPack type code, bits): kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4,
# kDLComplex 5, kDLBool 6. The F8, F6 and F4 types have no DLPack code.
DLPACK_DTYPES = {
    "BOOL": (6, 8), "U8": (1, 8), "I8": (0, 8), "U16": (1, 16), "I16": (0, 16),
    "U32": (1, 32), "I32": (0, 32), "U64": (1, 64), "I64": (0, 64), "F16": (2, 16),
    "BF16": (4, 16), "F32": (2, 32), "F64": (2, 64), "C64": (5, 64),
}

_FORM_NAMES = {0: None, N.DTYPE_F16: "F16", N.DTYPE_BF16: "BF16"}


# ---- DLPack (dlpack.h, the unversioned ABI every consumer accepts) -------------------------

class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _DELETER)]


# Live exports by the address of their DLManagedTensor: the struct, its shape array and the
# Pin stay referenced here until the consumer (or the capsule's destructor) calls the deleter.
_exports = {}
_exports_lock = threading.Lock()


def _release_export(addr):
    with _exports_lock:
        entry = _exports.pop(addr, None)
        if entry is not None:
            entry[2]._views.n -= 1


def _deleter_impl(addr):
    # Called by the consumer from any thread (ctypes takes the GIL); never raises into C.
    try:
        _release_export(addr)
    except Exception:
        pass


_deleter_fn = _DELETER(_deleter_impl)

_CAPSULE_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_DLTENSOR = ctypes.c_char_p(b"dltensor")


class _CAPI:
    """The three PyCapsule functions with this module's own prototypes: pythonapi[name]
    makes a new function object, where pythonapi.name is one shared with every other user
    of ctypes in the process, whose argtypes may differ."""

    def __init__(self):
        api = ctypes.pythonapi
        self.PyCapsule_New = api["PyCapsule_New"]
        self.PyCapsule_New.restype = ctypes.py_object
        self.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _CAPSULE_DESTRUCTOR]
        self.PyCapsule_IsValid = api["PyCapsule_IsValid"]
        self.PyCapsule_IsValid.restype = ctypes.c_int
        self.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.PyCapsule_GetPointer = api["PyCapsule_GetPointer"]
        self.PyCapsule_GetPointer.restype = ctypes.c_void_p
        self.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]


_capi = _CAPI()


def _capsule_destructor_impl(cap):
    # A capsule no consumer took (still named "dltensor": a consumer renames it
    # "used_dltensor" and owns the deleter from then on) releases its export itself.
    try:
        if _capi.PyCapsule_IsValid(cap, _DLTENSOR):
            _release_export(_capi.PyCapsule_GetPointer(cap, _DLTENSOR))
    except Exception:
        pass


_capsule_destructor = _CAPSULE_DESTRUCTOR(_capsule_destructor_impl)


def live_exports():
    """DLPack exports of device tensors not yet given back by their consumers."""
    with _exports_lock:
        return len(_exports)


class _ExportCount:
    """A DevicePin's live views: its DLPack exports not given back yet (Pin.release() and
    Client.close() count them with len(), as they count numpy views of a host pin)."""

    __slots__ = ("n",)

    def __init__(self):
        self.n = 0

    def __len__(self):
        return self.n


# ---- the device tier ------------------------------------------------------------------------

def devices(client):
    """The daemon's GPUs, as (list of dicts, reason): each dict has ordinal, kind ("cuda" or
    "emulated"), numa_node, entries, total_bytes, budget, used, hits, misses, evictions,
    evict_bytes, load_bytes and name; the reason says why the list is empty (a host-only
    daemon: "no CUDA driver ..."), "" otherwise."""
    lib = client._lib
    fn = getattr(lib, "weightd_devices", None)
    if fn is None:
        raise GPUTierUnavailableError(errno.ENOTSUP, "this libweightd (%s) has no GPU tier "
                                      "(weightd_devices)" % N.lib_path(), "devices")
    cap = 4
    while True:
        out = (N.DeviceInfo * cap)()
        why = ctypes.create_string_buffer(256)
        n = client._call("devices", fn, ctypes.addressof(out), cap, why, len(why))
        if n <= cap:
            break
        cap = n
    res = []
    for i in range(n):
        d = out[i]
        row = {f: getattr(d, f) for f, _ in N.DeviceInfo._fields_}
        row["name"] = _s(d.name)
        row["kind"] = "emulated" if d.kind == N.DEVICE_EMULATED else "cuda"
        res.append(row)
    return res, _s(why.value)


def trim(client, device, nbytes):
    """Asks the daemon for room on its GPU cuda:@device: components on it that no client maps
    or pins are evicted (demoted to the host cache) until @nbytes are freed or nothing
    evictable is left; returns once the memory is released, with the bytes freed (0: nothing
    could go). For a process out of VRAM next to the daemon's cache. Raises
    GPUTierUnavailableError when the daemon has no such GPU."""
    lib = client._lib
    fn = getattr(lib, "weightd_device_trim", None)
    if fn is None:
        raise GPUTierUnavailableError(errno.ENOTSUP, "this libweightd (%s) has no "
                                      "weightd_device_trim" % N.lib_path(), "device_trim")
    if device < 0 or nbytes < 0:
        raise ValueError("device and nbytes must be >= 0")
    client._enter()
    try:
        ret = fn(client._h, device, nbytes)
    finally:
        client._leave()
    if ret < 0:
        raise _gpu_error(ret, "cuda:%d" % device, "device_trim")
    return ret


def _gpu_error(ret, tier, op):
    err = error_from_code(ret, N.last_error(), op)
    if isinstance(err, NotSupportedError):
        return GPUTierUnavailableError(err.errno, "the GPU tier (%s) is not available: the "
                                       "daemon says: %s" % (tier, err.message), op)
    return err


class _Spec:
    """One tensor of a mapped allocation: its registry record (by value: weightd_tensor_*
    read its id and component) and what the allocation holds for it."""

    __slots__ = ("name", "ti", "dtype", "shape", "nbytes", "dptr", "why")


class DeviceMap:
    """One weightd_device_map of (model, component, ordinal, form) in this process."""

    def __init__(self, client, model, component, ordinal, form, kind):
        self.client = client
        self.model = model
        self.component = component
        self.ordinal = ordinal      # the daemon's: its tier cuda:N
        self.local = None           # this process's ordinal of the same GPU, once mapped
        self.form = form
        self.kind = kind
        self.ptr = None
        self.base = 0
        self.size = 0
        self.specs = None

    def map(self):
        """Maps; called with the client entered."""
        c = self.client
        m = ctypes.c_void_p()
        fn = getattr(c._lib, "weightd_device_map_opts", None)
        if fn is not None:
            # The one device-map call (docs/names.md): the load's form, NULL for as stored.
            opts = ctypes.byref(N.LoadOpts(dtype=self.form)) if self.form else None
            ret = fn(c._h, _b(self.model), _b(self.component or None), self.ordinal, opts,
                     ctypes.byref(m))
        else:
            ret = c._lib.weightd_device_map_ex(c._h, _b(self.model),
                                              _b(self.component or None), self.ordinal,
                                              self.form, ctypes.byref(m))
        if ret < 0:
            raise _gpu_error(ret, "cuda:%d" % self.ordinal, "device_map")
        self.ptr = m.value
        # Ordinals are per process (CUDA_VISIBLE_DEVICES): the library resolved the GPU by
        # its bus id, and DLPack must name this process's ordinal.
        self.local = c._lib.weightd_device_ordinal(self.ptr)
        self.base = c._lib.weightd_device_base(self.ptr)
        self.size = c._lib.weightd_device_size(self.ptr)

    def unmap(self):
        """Unmaps (the daemon's reference goes with it); called with the client entered."""
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.specs = None
            self.client._lib.weightd_device_unmap(self.client._h, ptr)

    def table(self):
        """name -> _Spec of every tensor of the component; called with the client entered."""
        if self.specs is None:
            self.specs = self._read_table()
        return self.specs

    def _read_table(self):
        c = self.client
        lib = c._lib
        cap = 256
        while True:
            infos = (N.TensorInfo * cap)()
            names = ctypes.create_string_buffer(cap * N.NAME_MAX)
            n = lib.weightd_tensor_list(c._h, _b(self.model), _b(self.component or None),
                                        ctypes.addressof(infos), ctypes.addressof(names), cap)
            if n < 0:
                raise error_from_code(n, N.last_error(), "tensor")
            if n <= cap:
                break
            cap = n
        out = {}
        raw = names.raw
        for i in range(n):
            s = _Spec()
            s.name = _s(raw[i * N.NAME_MAX:(i + 1) * N.NAME_MAX].split(b"\0", 1)[0])
            s.ti = N.TensorInfo()
            ctypes.pointer(s.ti)[0] = infos[i]
            self._resolve(s)
            out[s.name] = s
        return out

    def _resolve(self, s):
        """Sets s.dtype, s.shape, s.nbytes, s.dptr from the mapping's table (the registry
        record gives the shape: a conversion keeps the element count), or s.why when the
        tensor is not in the allocation (then s.dtype is None)."""
        ti = s.ti
        dptr, dtype, nbytes = ctypes.c_uint64(), ctypes.c_uint(), ctypes.c_uint64()
        s.shape = tuple(int(ti.shape[k]) for k in range(ti.rank))
        s.why = None
        ret = self.client._lib.weightd_tensor_device_info(
            self.ptr, ctypes.addressof(ti), ctypes.byref(dptr), ctypes.byref(dtype),
            ctypes.byref(nbytes))
        if ret < 0 or dtype.value >= len(dtypes.NAMES):
            s.dtype, s.nbytes, s.dptr = None, 0, 0
            s.why = ("%s is not in the mapped allocation: %s" % (s.name, N.last_error())
                     if ret < 0 else "%s: dtype %d on the device is not one weightd knows"
                     % (s.name, dtype.value))
            return
        s.dtype, s.nbytes, s.dptr = dtypes.NAMES[dtype.value], nbytes.value, dptr.value

def unmap_all(client, maps):
    """Unmaps every DeviceMap of @maps (a dict); called with the client entered."""
    for dm in list(maps.values()):
        try:
            dm.unmap()
        except Exception:
            pass


def _kind(client, ordinal):
    try:
        devs, _ = devices(client)
    except WeightdError:
        return "cuda"
    for d in devs:
        if d["ordinal"] == ordinal:
            return d["kind"]
    return "cuda"


class DevicePin(Pin):
    """A pin on (model, component, cuda:N) whose tensors are DeviceTensor objects (module
    comment). Attribute dtype_form: None (as stored), "F16" or "BF16" (F32 tensors converted
    by the daemon). tensor(), tensors() and release() as for a host Pin; live_views() counts
    DLPack exports not yet given back."""

    def __init__(self, client, key, form):
        Pin.__init__(self, client, key, None)
        self._views = _ExportCount()
        self._form = form
        self.dtype_form = _FORM_NAMES.get(form)
        self.ordinal = self._tier - 1
        self.device = "cuda:%d" % self.ordinal
        self._maps = []
        try:
            self._map_all()
        except BaseException:
            self._released = True
            client._release_key(key, deferred_ok=False)
            raise

    def _components(self):
        """The component names of the pin's target ("" for a model the registry does not
        list: the map call then says what is wrong)."""
        if self.component:
            return [self.component]
        for m in self._client.models():
            if m.name == self.model:
                return [c.name for c in m.components] or [""]
        return [""]

    def _map_all(self):
        c = self._client
        comps = self._components()
        kind = _kind(c, self.ordinal)
        c._enter()
        try:
            shared = c._devmaps.setdefault(self._key, {})
            for comp in comps:
                dm = shared.get((comp, self._form))
                if dm is None or dm.ptr is None:
                    dm = DeviceMap(c, self.model, comp, self.ordinal, self._form, kind)
                    dm.map()
                    shared[(comp, self._form)] = dm
                self._maps.append(dm)
        finally:
            c._leave()

    @property
    def kind(self):
        """"cuda", or "emulated" for the emulated device (host memory)."""
        return self._maps[0].kind if self._maps else "cuda"

    def _check(self, op):
        """Raises ReleasedError once the pin is released or its maps are gone; called with
        the client entered."""
        if self._released or any(dm.ptr is None for dm in self._maps):
            raise ReleasedError(errno.EBADF, "pin on %s was released; take a new one"
                                % self._target(), op)

    def tensor_with_dtype(self, name, component=None):
        """(DeviceTensor, safetensors dtype name) for tensor @name."""
        c = self._client
        c._enter()
        try:
            self._check("tensor")
            found = []
            for dm in self._maps:
                if component is not None and dm.component != component:
                    continue
                s = dm.table().get(name)
                if s is not None:
                    found.append((dm, s))
            if not found:
                raise error_from_code(-errno.ENOENT, "no tensor %s in %s%s" % (
                    name, self._target(), " component " + component if component else ""),
                    "tensor")
            if len(found) > 1:
                raise WeightdError(errno.ENOTUNIQ, "%s is in several components of %s: name "
                                   "one (%s)" % (name, self.model,
                                                 ", ".join(dm.component for dm, _ in found)),
                                   "tensor")
            dm, s = found[0]
            if s.dtype is None:
                raise WeightdError(errno.EPROTO, s.why, "tensor")
            return DeviceTensor(self, dm, s), s.dtype
        finally:
            c._leave()

    def tensor(self, name, component=None):
        """Tensor @name as a DeviceTensor (no copy: its data_ptr is in the allocation).
        Raises ReleasedError after release(), NotFoundError (no such tensor), WeightdError
        ENOTUNIQ (a whole-model pin where several components have @name)."""
        return self.tensor_with_dtype(name, component)[0]

    def tensors(self, names=None):
        """A dict name -> DeviceTensor of @names, or of every tensor of the pin (leaving
        out names several components share, and tensors whose dtype cannot be told)."""
        if names is not None:
            return {n: self.tensor(n) for n in names}
        c = self._client
        c._enter()
        try:
            self._check("tensor")
            seen, out = set(), {}
            for dm in self._maps:
                for n, s in dm.table().items():
                    if n in seen:
                        out.pop(n, None)
                        continue
                    seen.add(n)
                    if s.dtype is not None:
                        out[n] = DeviceTensor(self, dm, s)
            return out
        finally:
            c._leave()

    def _current_table(self):
        raise NotSupportedError(errno.ENOTSUP, "a device pin has no host-cache table",
                                "tensor")


class DeviceTensor:
    """A tensor in a GPU tier allocation mapped into this process.

    Attributes: name, dtype (safetensors name), shape, nbytes, device ("cuda:N"), kind
    ("cuda" or "emulated"), pin (its DevicePin). data_ptr is the device address (CUdeviceptr;
    on the emulated device a host address). numpy() copies the bytes to a new host array.
    __dlpack__()/__dlpack_device__() export it with no copy: torch.from_dlpack(t).
    Every use after the pin's release raises ReleasedError.
    """

    __slots__ = ("name", "dtype", "shape", "nbytes", "device", "pin", "_map", "_spec")

    def __init__(self, pin, dmap, spec, dtype=None, shape=None):
        self.pin = pin
        self._map = dmap
        self._spec = spec
        self.name = spec.name
        self.dtype = dtype or spec.dtype
        self.shape = shape if shape is not None else spec.shape
        self.nbytes = spec.nbytes
        self.device = pin.device

    @property
    def kind(self):
        return self._map.kind

    def _enter(self, op):
        c = self.pin._client
        c._enter()
        try:
            self.pin._check(op)
            if self._map.ptr is None:
                raise ReleasedError(errno.EBADF, "the mapping of %s was released" % self.name,
                                    op)
        except BaseException:
            c._leave()
            raise
        return c

    @property
    def data_ptr(self):
        """The device address of the tensor's first byte (ReleasedError once released)."""
        c = self._enter("data_ptr")
        try:
            return self._spec.dptr
        finally:
            c._leave()

    def numpy(self):
        """A host copy as a new numpy array, as the host tier shows this dtype (BF16 and F8
        as uint16/uint8, F6/F4 as packed bytes), through the device layer's device-to-host
        copy (weightd_device_read)."""
        arr = np.empty(dtypes.array_shape(self.dtype, self.shape), dtypes.NUMPY[self.dtype])
        if arr.nbytes != self.nbytes:
            raise WeightdError(errno.EPROTO, "%s: %d bytes for a %s%s array of %d bytes"
                               % (self.name, self.nbytes, self.dtype, list(self.shape),
                                  arr.nbytes), "numpy")
        c = self._enter("numpy")
        try:
            ret = c._lib.weightd_device_read(self._map.ptr, ctypes.addressof(self._spec.ti),
                                             arr.ctypes.data if arr.nbytes else None,
                                             arr.nbytes)
            if ret < 0:
                raise error_from_code(ret, "%s of %s on %s: %s" % (
                    self.name, self.pin.model, self.device, N.last_error()), "numpy")
        finally:
            c._leave()
        return arr

    def raw(self):
        """The same bytes typed as U8 (shape unchanged for 8-bit types, flat for others):
        the DLPack-exportable view of dtypes DLPack has no code for (F8_*)."""
        if dtypes.BITS[self.dtype] == 8 and self.dtype not in dtypes.SUBBYTE:
            shape = self.shape
        else:
            shape = (self.nbytes,)
        return DeviceTensor(self.pin, self._map, self._spec, "U8", shape)

    def __dlpack_device__(self):
        """(kDLCUDA = 2, N) for a tensor on cuda:N. On the emulated device the memory is
        host memory: (kDLCPU = 1, 0), so that no consumer takes it for device memory."""
        if self._map.kind == "emulated":
            return (KDL_CPU, 0)
        return (KDL_CUDA, self._map.local)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        """A "dltensor" capsule of an unversioned DLManagedTensor over the allocation (no
        copy). @stream is accepted and needs no wait: the daemon's copies completed before
        the load returned. Raises BufferError for copy=True or another @dl_device, and for
        dtypes DLPack has no code for (use raw()); ReleasedError once released."""
        if copy:
            raise BufferError("a weightd device tensor exports without copying; use numpy() "
                              "for a host copy")
        dev = self.__dlpack_device__()
        if dl_device is not None and tuple(dl_device) != dev:
            raise BufferError("%s is on DLPack device %s, not %s" % (self.name, dev,
                                                                   tuple(dl_device)))
        code = DLPACK_DTYPES.get(self.dtype)
        if code is None:
            raise BufferError("%s is %s, which DLPack has no type code for: export "
                              "t.raw() (its bytes as uint8) and reinterpret them (torch: "
                              ".view(torch.float8_e4m3fn))" % (self.name, self.dtype))
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        mt = DLManagedTensor()
        c = self._enter("__dlpack__")
        try:
            mt.dl_tensor.data = self._spec.dptr
            mt.dl_tensor.device = DLDevice(dev[0], dev[1])
            mt.dl_tensor.ndim = ndim
            mt.dl_tensor.dtype = DLDataType(code[0], code[1], 1)
            mt.dl_tensor.shape = shape
            mt.dl_tensor.strides = None
            mt.dl_tensor.byte_offset = 0
            mt.manager_ctx = None
            mt.deleter = _deleter_fn
            addr = ctypes.addressof(mt)
            with _exports_lock:
                _exports[addr] = (mt, shape, self.pin)
                self.pin._views.n += 1
        finally:
            c._leave()
        try:
            return _capi.PyCapsule_New(addr, _DLTENSOR, _capsule_destructor)
        except BaseException:
            # No capsule, so no deleter will ever run: the export must not stay counted.
            _release_export(addr)
            raise

    def __repr__(self):
        return "DeviceTensor(%r, %s, %s, %s)" % (self.name, self.dtype, list(self.shape),
                                                 self.device)
