"""No model hub for the tests that load models: transformers and huggingface_hub read only local files."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Autouse in every module that imports it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield
