"""Secret values never leave the process in clear: every text or record written or raised goes through `redact`."""

from __future__ import annotations

import json
from typing import Any

REDACTED = "[REDACTED]"


def redact(data: Any, secrets: list[str]) -> Any:
    """Replace every occurrence of a secret value in a string or in every string of a JSON-like structure."""
    secrets = sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True)
    if not secrets:
        return data
    if isinstance(data, str):
        for secret in secrets:
            data = data.replace(secret, REDACTED)
        return data
    text = json.dumps(data)
    for secret in secrets:
        text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    return json.loads(text)
