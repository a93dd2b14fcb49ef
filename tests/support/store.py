"""Store helpers shared by the local and the object-storage tests."""
from __future__ import annotations

import threading

from sera_ops.store.io import claim


def claims_from_threads(path, count: int = 8) -> list[str]:
    """What `count` threads claiming `path` at once were each told owns it."""
    results: list[str] = []
    threads = [threading.Thread(target=lambda n=n: results.append(claim(path, f"instance-{n}"))) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
