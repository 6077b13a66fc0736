"""Exceptions of the weightd binding.

Every failure of a call that went to libweightd is a WeightdError carrying the daemon's
error code (``errno``, positive, and its symbolic name ``code``) and the library's message
(``weightd_last_error()``, which names the model, file, tensor or tier where it can).
Subclasses let callers catch the cases they can act on; each is still a WeightdError.
"""

import errno as _errno
import os as _os

__all__ = [
    "WeightdError", "LibraryUnavailableError", "DaemonUnavailableError", "NotFoundError",
    "BudgetExceededError", "NotSupportedError", "GPUTierUnavailableError", "BusyError",
    "MalformedFileError", "ReleasedError", "WeightdFallbackWarning", "error_from_code",
]


class WeightdError(Exception):
    """A failed weightd operation.

    Attributes: ``errno`` (positive errno value, 0 when the failure is the binding's own),
    ``code`` (its symbolic name, e.g. ``"ENOSPC"``), ``message`` (why, in words) and
    ``op`` (the call that failed, e.g. ``"load"``).
    """

    def __init__(self, err, message, op=""):
        self.errno = abs(int(err))
        self.code = _errno.errorcode.get(self.errno, "E%d" % self.errno) if self.errno else ""
        self.message = message or (_os.strerror(self.errno) if self.errno else "")
        self.op = op
        text = self.message
        if self.code:
            text = "%s (%s)" % (text, self.code)
        if op:
            text = "%s: %s" % (op, text)
        super().__init__(text)


class LibraryUnavailableError(WeightdError):
    """libweightd could not be loaded into this process (missing, or ASan-instrumented)."""


class DaemonUnavailableError(WeightdError):
    """No daemon answers on the socket (ENOENT, ECONNREFUSED), or it went away."""


class NotFoundError(WeightdError):
    """No such model, component, tensor or pin (ENOENT)."""


class BudgetExceededError(WeightdError):
    """The target can never fit the tier's budget (EFBIG), or pinned entries leave no room
    for it (ENOSPC)."""


class NotSupportedError(WeightdError):
    """The daemon cannot do this in this build (ENOTSUP / EOPNOTSUPP)."""


class GPUTierUnavailableError(NotSupportedError):
    """A cuda:N tier is not available: the daemon has no GPU tier (no CUDA driver, no such
    GPU; the message carries the daemon's reason) or this libweightd has no device API."""


class BusyError(WeightdError):
    """The target is in use: pinned by another client, or views of it are still alive."""


class MalformedFileError(WeightdError):
    """A safetensors file breaks the format (EBADMSG); the message names rule and offset."""


class ReleasedError(WeightdError):
    """The pin or client was released or closed; it cannot give out views any more."""


class WeightdFallbackWarning(UserWarning):
    """safe_open()/load_file() read a file directly because the daemon could not serve it."""


_DAEMON_GONE = {_errno.ECONNREFUSED, _errno.ECONNRESET, _errno.ESHUTDOWN, _errno.EPIPE}


def error_from_code(ret, message, op="", attach=False):
    """Builds the WeightdError subclass for negative (or positive) errno @ret."""
    e = abs(int(ret))
    if e in _DAEMON_GONE or (attach and e == _errno.ENOENT):
        cls = DaemonUnavailableError
    elif e == _errno.ENOENT:
        cls = NotFoundError
    elif e in (_errno.ENOSPC, _errno.EFBIG):
        cls = BudgetExceededError
    elif e in (_errno.ENOTSUP, _errno.EOPNOTSUPP):
        cls = NotSupportedError
    elif e == _errno.EBUSY:
        cls = BusyError
    elif e == _errno.EBADMSG:
        cls = MalformedFileError
    else:
        cls = WeightdError
    return cls(e, message, op)
