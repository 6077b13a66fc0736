"""weightd.patch(): routes the real safetensors package through weightd, for programs that
are not changed (transformers, diffusers, anything that calls safetensors).

After patch(), these names are weightd's:
  safetensors.safe_open                  -> weightd.safe.safe_open ("np" and "pt"; other
                                            frameworks go to the original)
  safetensors.torch.load_file            -> weightd.torch.load_file
  safetensors.torch.load_model           -> the original, which calls the patched load_file
  safetensors.numpy.load_file            -> weightd.numpy.load_file
Modules imported later get the patched names: a meta-path hook patches safetensors,
safetensors.torch and safetensors.numpy right after they execute, so patch() neither imports
torch nor needs to run before anything else. Names that modules already imported with
`from safetensors import safe_open` are replaced in those modules too (any module attribute
that is the original function).

Switching it on without changing code: `python -m weightd.run script.py ARGS` (or
`-m module ARGS`), or WEIGHTD_PATCH=1 with the weightd-patch.pth file that `make install`
puts beside the package (bindings/python/README.md, "Unmodified programs").
"""

import importlib.abc
import importlib.machinery
import sys
import threading

from . import safe as wsafe

__all__ = ["patch", "unpatch", "patched"]

_TARGETS = ("safetensors", "safetensors.torch", "safetensors.numpy")
_lock = threading.RLock()
_state = {"on": False, "socket": None}
_originals = {}  # (module name, attribute) -> the original object


def _replacements(modname):
    """attribute -> replacement for module @modname, built over the originals."""
    socket = _state["socket"]
    if modname == "safetensors":
        orig = _originals.get(("safetensors", "safe_open"))

        def safe_open(filename, framework, device="cpu", **kw):
            if str(framework) not in wsafe.FRAMEWORKS and orig is not None:
                return orig(filename, framework, device, **kw)
            return wsafe.safe_open(filename, framework=framework, device=device, socket=socket,
                                   **kw)
        safe_open.__doc__ = wsafe.safe_open.__doc__
        safe_open.__wrapped__ = orig
        return {"safe_open": safe_open}
    if modname == "safetensors.torch":
        def load_file(filename, device="cpu", **kw):
            return wsafe.load_file(filename, device=device, framework="pt", socket=socket, **kw)
        load_file.__wrapped__ = _originals.get(("safetensors.torch", "load_file"))
        # The original load_model() calls the module's load_file, which is now this one.
        return {"load_file": load_file}
    if modname == "safetensors.numpy":
        def load_file(filename, **kw):
            return wsafe.load_file(filename, device="cpu", framework="np", socket=socket, **kw)
        load_file.__wrapped__ = _originals.get(("safetensors.numpy", "load_file"))
        return {"load_file": load_file}
    return {}


def _patch_module(mod):
    name = mod.__name__
    for attr in {"safetensors": ("safe_open",)}.get(name, ("load_file",)):
        if hasattr(mod, attr) and (name, attr) not in _originals:
            _originals[(name, attr)] = getattr(mod, attr)
    # safetensors.torch and .numpy hold the `safe_open` they imported from the package: the
    # package is patched first (a parent executes before its submodules), and
    # _rebind_everywhere() covers modules imported before patch().
    for attr, fn in _replacements(name).items():
        setattr(mod, attr, fn)
        _rebind_everywhere(_originals.get((name, attr)), fn)


def _rebind_everywhere(orig, new):
    """Replaces @orig by @new in every imported module's namespace (`from safetensors import
    safe_open` made before patch())."""
    if orig is None or orig is new:
        return
    for m in list(sys.modules.values()):
        d = getattr(m, "__dict__", None)
        if not isinstance(d, dict) or d.get("__name__", "").startswith("weightd"):
            continue
        for k, v in list(d.items()):
            if v is orig:
                d[k] = new


class _Loader(importlib.abc.Loader):
    """Delegates to the real loader, then patches the module it executed."""

    def __init__(self, real):
        self._real = real

    def create_module(self, spec):
        return self._real.create_module(spec)

    def exec_module(self, module):
        self._real.exec_module(module)
        with _lock:
            if _state["on"]:
                _patch_module(module)

    def __getattr__(self, name):
        return getattr(self._real, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _TARGETS or not _state["on"]:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader)
        return spec


_finder = _Finder()


def patch(socket=None):
    """Routes safetensors' safe_open / load_file / load_model through weightd (module
    comment), in this process, from now on. @socket: the daemon's socket (default
    $WEIGHTD_SOCKET, else the per-user one). Idempotent; returns None."""
    with _lock:
        _state["socket"] = socket
        _state["on"] = True
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        for name in _TARGETS:
            mod = sys.modules.get(name)
            if mod is not None:
                _patch_module(mod)


def unpatch():
    """Puts the original functions back everywhere patch() replaced them."""
    with _lock:
        _state["on"] = False
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        for (name, attr), orig in list(_originals.items()):
            mod = sys.modules.get(name)
            if mod is None:
                continue
            cur = getattr(mod, attr, None)
            if cur is not orig:
                setattr(mod, attr, orig)
                _rebind_everywhere(cur, orig)
        _originals.clear()


def patched():
    """True while patch() is in force."""
    return _state["on"]
