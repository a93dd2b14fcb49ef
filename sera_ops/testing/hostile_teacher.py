"""A hostile teacher: the scripted teacher's HTTP server, but as the agent it emits attacks on the machine it runs on.

A real teacher is an untrusted program author, and every command it emits runs on the platform's machines. This
double plays that worst case over the real OpenAI protocol, so tests can check what a sandbox lets through: it reads
other processes' environments, writes outside the work tree, reaches the network and its own port, forks without
bound, allocates memory without bound, sleeps forever, leaves a CPU burner behind and deletes the work tree's .git.
With `victims` set, only the episodes of those start functions are attacked (each with its own attacks) and the
others get the ordinary scripted behaviour, so a batch can mix both. Every
observation the agent sent back is kept in `observations`, which is where a leaked secret would show up.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Iterable

from sera_ops.testing.scripted_teacher import SUBMIT_MARKER, ScriptedTeacher, ScriptedTeacherConfig
from sera_ops.testing.scripted_teacher.conversation import history, message_text, target_of

REACHED = "REACHED"
"""Printed by the network attack when a connection succeeded."""

_NETWORK = """\
import socket
for host, port in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("10.0.0.1", 80)]:
    try:
        socket.create_connection((host, port), timeout=2).sendall(b"GET /v1/models HTTP/1.0\\r\\n\\r\\n")
        print("{reached}", host, port)
    except OSError as error:
        print("blocked", host, port, error)"""

_MEMORY = """\
hoard = []
while True:
    hoard.append(bytearray(32 * 2**20))"""

ATTACKS = {
    "environ": "cat /proc/1/environ /proc/{pid}/environ; for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done;"
               " env",
    "read_outside": "cat {reads} /root/.docker/config.json /etc/shadow",
    "write_outside": "for f in /tmp/../root/sera-pwned /etc/sera-pwned {writes}; do echo pwned > \"$f\"; done; "
                     "touch {dirs}",
    "network": "python3 - <<'EOF'\n" + _NETWORK + "\nEOF",
    "linger": "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 &",
    "memory": "python3 - <<'EOF'\n" + _MEMORY + "\nEOF",
    "sleep": "sleep 100000",
    "fork_bomb": "bomb() {{ bomb | bomb & }}; bomb",
    "delete_git": "rm -rf .git",
}
DEFAULT_ATTACKS = ("environ", "read_outside", "write_outside", "network", "linger", "memory", "sleep", "fork_bomb")


class HostileTeacher(ScriptedTeacher):
    """The hostile teacher served over HTTP on loopback. `outside` are host paths it tries to overwrite (and the
    directories they are in, to create files there); `reads` are host files it tries to print."""

    name = "hostile teacher"

    def __init__(self, config: ScriptedTeacherConfig | None = None, *, attacks: Iterable[str] = DEFAULT_ATTACKS,
                 outside: Iterable[str] = (), reads: Iterable[str] = ()) -> None:
        super().__init__(config or ScriptedTeacherConfig(model="hostile-teacher"))
        self.attacks, self.outside, self.reads = tuple(attacks), tuple(outside), tuple(reads)
        self.victims: dict[str, tuple[str, ...]] | None = None
        """Attacks per start function, the only episodes attacked; None: every episode gets `attacks`."""
        self._seen: list[str] = []
        self._seen_lock = threading.Lock()

    @property
    def observations(self) -> list[str]:
        """Everything but system prompts that agents sent back, in the order received."""
        with self._seen_lock:
            return list(self._seen)

    def agent_action(self, task: str, messages: list[dict], seed: int | None = None) -> tuple[str, str]:
        with self._seen_lock:
            self._seen += [message_text(m.get("content")) for m in messages[-1:] if m.get("role") != "system"]
        attacks = self.attacks
        if self.victims is not None:
            target = target_of(task, self.config)
            if target is None or target.start_fn not in self.victims:
                return super().agent_action(task, messages, seed)
            attacks = self.victims[target.start_fn]
        turn = len(history(messages))
        if turn < len(attacks):
            return f"Attack {turn + 1}: {attacks[turn]}.", self.command(attacks[turn])
        return "Done attacking; submitting.", f"echo {SUBMIT_MARKER}"

    def command(self, attack: str) -> str:
        """The shell command of one attack (a key of ATTACKS), aimed at this teacher's port and process and the
        configured paths."""
        port = int(self.address.rsplit(":", 1)[1])
        dirs = sorted({os.path.join(os.path.dirname(path), "sera-pwned") for path in self.outside})
        return ATTACKS[attack].format(pid=os.getpid(), port=port, reached=REACHED, reads=shlex.join(self.reads),
                                      writes=shlex.join(self.outside), dirs=shlex.join(dirs))
