"""What both configuration files share: strict models, secrets by reference, errors that name the file and the field.

A secret is never a value in a file: a `SecretRef` names an Airflow connection and/or an environment variable, read
only when needed (`resolve_secret`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration file is unusable; the message names the file, the field and what is expected."""

    def __init__(self, file: Path | str, field: str, problem: str):
        self.file, self.field, self.problem = str(file), field, problem
        super().__init__(f"{file}: field '{field}': {problem}" if field else f"{file}: {problem}")


class StrictModel(BaseModel):
    """A settings model: unknown keys are errors (a misspelt setting is never silently ignored), and each field's
    attribute docstring is its `description`, which the generated configuration reference shows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class SecretRef(StrictModel):
    """Where a secret lives: an Airflow connection (its password) and/or an environment variable. Never the value."""

    connection: str | None = None
    """An Airflow connection id (a connection, a secrets backend or `AIRFLOW_CONN_<ID>`): its password is the secret.
    Tried first, and only when running under Airflow."""
    env: str | None = None
    """An environment variable of the worker holding the secret: read when there is no connection, it is missing or
    its password is empty, and outside Airflow (`sera run`, the demo). Give `connection` and/or `env`."""

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if not self.connection and not self.env:
            raise ValueError("give 'connection' (an Airflow connection id) and/or 'env' (an environment variable)")
        return self


SecretLookup = Callable[[str], "str | None"]


def pool_name(server: str) -> str:
    """The Airflow pool that throttles batch tasks of one model server."""
    return f"sera_model_{server}"


def resolve_secret(ref: SecretRef | None, connection_lookup: SecretLookup | None = None) -> str | None:
    """The secret's value: the connection first (when running under Airflow), then the environment variable."""
    if ref is None:
        return None
    if ref.connection and connection_lookup is not None:
        value = connection_lookup(ref.connection)
        if value:
            return value
    if ref.env:
        return os.environ.get(ref.env) or None
    return None


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http(s) URL such as http://127.0.0.1:8000/v1 or https://api.github.com")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


def all_match(pattern: re.Pattern[str], what: str) -> AfterValidator:
    """A list validator naming every entry that is not `what`."""

    def check(values: list[str]) -> list[str]:
        bad = [value for value in values if not pattern.match(value)]
        if bad:
            raise ValueError(f"not {what}: {', '.join(map(repr, bad))}")
        return values

    return AfterValidator(check)


def no_duplicates(values: list[str]) -> list[str]:
    repeated = sorted({value for value in values if values.count(value) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


STORAGE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_storage_url(root: Path | str) -> bool:
    """Whether a storage root names object storage (`s3://…`, `gs://…`) rather than a local directory."""
    return isinstance(root, str) and bool(STORAGE_URL.match(root)) and not root.startswith("file://")


class FieldProblem(ValueError):
    """Raised inside validators to point at a field other than the one being validated."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(problem)
