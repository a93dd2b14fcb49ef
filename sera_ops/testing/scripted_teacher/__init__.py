"""A scripted teacher: a deterministic stand-in for a teacher LLM behind the real OpenAI chat-completions protocol.

It lets the whole SERA pipeline (mini-swe-agent's agent loop, real sandboxes, real HTTP clients, judge and synthetic-PR
writer) run without a GPU, for tests and for users' dry runs. It is not a model: it plays a fixed script. As the agent
it locates the start function named in the task, prints its source with a small `ast` script, makes one edit that
changes behaviour by rewriting a line by absolute line number (flips a comparison, bumps a numeric constant, negates
an `if` test, or, where none of those applies, inserts a guard that raises on a None argument), reviews `git diff`
and submits. The kind of edit is a seeded choice per function and vague report (so each attempt may pick another);
the synthetic PR describes the symptom of that kind, and rollout two derives the same edit from the function and the
symptom, so mode "full" reproduces rollout one's patch exactly, "partial" writes the same line another way (sharing
the removed line, or the guard's `if`) and "none" changes nothing. The judge turns down empty patches and patches that
change no Python code (comments, blank lines, spacing). All randomness (edit kinds, modes, judge rejections, injected
errors and stalls) comes from stable hashes of the seed and the request, so a run is reproducible.

The package is split along the script's parts: `config` (the settings and the seeded choices), `conversation`
(what a request says about its episode), `edits` (the edit, found with `ast`), `agent` (the next command),
`replies` (the judge and the writer), `server` (HTTP) and `cli` (`python -m sera_ops.testing.scripted_teacher`).
"""

from sera_ops.testing.scripted_teacher.agent import MAX_AGENT_TURNS
from sera_ops.testing.scripted_teacher.cli import main
from sera_ops.testing.scripted_teacher.config import (
    LOCATE_NOTE,
    MODES,
    SUBMIT_MARKER,
    ScriptedTeacherConfig,
    rollout_two_mode,
    stable_fraction,
)
from sera_ops.testing.scripted_teacher.edits import EDIT_KINDS
from sera_ops.testing.scripted_teacher.server import InFlightMeter, ScriptedTeacher

__all__ = [
    "EDIT_KINDS",
    "LOCATE_NOTE",
    "MAX_AGENT_TURNS",
    "MODES",
    "SUBMIT_MARKER",
    "InFlightMeter",
    "ScriptedTeacher",
    "ScriptedTeacherConfig",
    "main",
    "rollout_two_mode",
    "stable_fraction",
]
