"""What teacher calls cost: token usage per call kind, an instance's budget and the run's spend ledger.

Every call is priced at its server's `price_per_mtok_in`/`_out` and charged to its instance's `Budget`, which refuses
calls once `cost_limits.per_instance_usd` is reached; what each instance's stage spent goes to the run's
`SpendLedger` (one append-only file per process), which `cost_limits.per_run_usd` is checked against.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sera_ops.settings import ModelServer
from sera_ops.store.io import StorePath, append_text


class CostLimitReached(RuntimeError):
    """The instance's spend reached `cost_limits.per_instance_usd`: no further call is made for it."""


@dataclass
class Usage:
    """Calls, tokens and their cost on one server (`server`: its name in platform.yaml), for one instance and one
    kind of call (agent, judge, writer): what the run statistics sum per stage, server and run."""

    server: str = ""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, response: Any, server: ModelServer) -> float:
        """Count one call; returns its cost at the server's prices."""
        usage = getattr(response, "usage", None)
        prompt, completion = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
        cost = server.cost_usd(prompt, completion)
        with self._lock:
            self.calls += 1
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.cost_usd += cost
        return cost

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"server": self.server, "calls": self.calls, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6)}


class Budget:
    """One instance's spend (earlier stages and tries included) against its limit, charged by each of its calls in a
    stage. A call is refused once the limit is reached; the call that crosses it completes, as with mini-swe-agent's
    `cost_limit`, so an instance overshoots by at most one call."""

    def __init__(self, limit_usd: float | None = None, spent_before_usd: float = 0.0):
        self.limit_usd, self.spent_before_usd, self.added_usd = limit_usd, spent_before_usd, 0.0

    @property
    def exceeded(self) -> bool:
        return self.limit_usd is not None and self.spent_before_usd + self.added_usd >= self.limit_usd

    def check(self) -> None:
        if self.exceeded:
            raise CostLimitReached(f"the instance has spent ${self.spent_before_usd + self.added_usd:.4f}, its "
                                   f"limit is ${self.limit_usd:g} (cost_limits.per_instance_usd)")

    def add(self, usd: float) -> None:
        self.added_usd += usd


class SpendLedger:
    """The run's spend on priced teachers: one append-only file per process (`<host>-<pid>.jsonl`, a line per
    instance and stage), so parallel batch tasks never write the same file and need no lock on any filesystem. A
    reader sums only what was appended since it last looked, and only whole lines. On object storage an append is a
    rewrite of the process's own object (`store.io.append_text`), which no other process writes."""

    def __init__(self, directory: StorePath):
        self.directory = directory
        self._lock = threading.Lock()
        self._offsets: dict[str, int] = {}
        self._by_instance: Counter[str] = Counter()
        self._total = 0.0

    def record(self, instance_id: str, stage: str, usd: float) -> None:
        if usd <= 0:
            return
        line = json.dumps({"instance": instance_id, "stage": stage, "usd": round(usd, 9)}) + "\n"
        own_file = self.directory / f"{socket.gethostname()}-{os.getpid()}.jsonl"  # at write time: safe across fork
        with self._lock:
            append_text(own_file, line)

    def total(self) -> float:
        with self._lock:
            self._read_new()
            return self._total

    def spent(self, instance_id: str) -> float:
        with self._lock:
            self._read_new()
            return self._by_instance[instance_id]

    def _read_new(self) -> None:
        for path in sorted(self.directory.glob("*.jsonl")):
            offset = self._offsets.get(path.name, 0)
            with path.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
            whole = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
            for line in whole.splitlines():
                entry = json.loads(line)
                self._by_instance[entry["instance"]] += entry["usd"]
                self._total += entry["usd"]
            self._offsets[path.name] = offset + len(whole)


_LEDGERS: dict[StorePath, SpendLedger] = {}
_LEDGERS_LOCK = threading.Lock()


def spend_ledger(directory: StorePath) -> SpendLedger:
    """This process's reader and writer of a run's ledger, shared by its threads (so each line is read once)."""
    with _LEDGERS_LOCK:
        return _LEDGERS.setdefault(directory, SpendLedger(directory))
