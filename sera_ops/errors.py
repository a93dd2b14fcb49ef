"""Which errors retrying cannot fix, so that the scheduler fails their task at once instead of burning its retries.

A permanent error is a wrong input: a configuration or parameter, a source path, commit or image that does not exist,
an install command or smoke check that fails the same way every time. Everything else (a teacher answering 429/5xx or
not at all, a registry push, a Docker engine hiccup) may heal and is retried. The Airflow adapter
(`plugins/sera_airflow.py`, `fail_fast`) asks `is_permanent`; sera_ops itself stays free of Airflow.
"""

from __future__ import annotations

from sera_ops.settings import ConfigError
from sera_ops.sources.repos import SourceError

PERMANENT_KINDS: tuple[type[BaseException], ...] = (ConfigError, SourceError)
"""Errors about the inputs themselves (configuration; a source path, commit or image that cannot be found)."""


class PermanentError(Exception):
    """Base or mixin for errors that come back on every retry; the message names the input to fix."""


def is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help. An explicit `permanent` attribute wins (`images.ImageBuildError` sets it per
    cause); otherwise the kind decides, unless a connection failure, a timeout or a 429/5xx answer lies beneath
    (e.g. an image pull that failed because the registry was down, not because the image is missing)."""
    flag = getattr(exc, "permanent", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, (PermanentError, *PERMANENT_KINDS)) and not _transient_cause(exc)


def _transient_cause(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        status = getattr(cause, "status_code", None)
        if isinstance(cause, ConnectionError | TimeoutError) or (isinstance(status, int) and
                                                                 (status == 429 or status >= 500)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
