"""Soft verification: does rollout two's patch reproduce rollout one's changed lines?

SERA has no tests to run, so it verifies by line-level recall of the first patch inside the second one. A threshold of 1
is "hard" (every changed line of P1 reappears in P2, extra lines allowed), 0 < t < 1 is "soft", 0 accepts any non-empty
P2 as long as P1 changed something.

The recall functions need only the standard library: the evaluation exports ship this file as it is to harnesses
outside the platform (`evaluate.exports`), so only `verify`, which builds the platform's record, imports the project.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sera_ops.records import Verdict

_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def changed_lines(patch: str) -> list[str]:
    """The `+`/`-` lines of a unified diff, sign and whitespace kept; headers and whitespace-only changes dropped.

    SERA dropped every line starting with `---`/`+++`, which also threw away a removed line whose text starts with
    `--` (an SQL or Lua comment) or an added one starting with `++`. Here hunks are read by their line counts, so
    a line is a change exactly when it lies inside a hunk; everything outside hunks is header or noise.
    """
    lines = patch.splitlines()
    if not any(_HUNK_HEADER.match(line) for line in lines):
        return _changed_lines_without_hunks(lines)
    kept: list[str] = []
    old_left = new_left = 0
    for line in lines:
        if old_left > 0 or new_left > 0:
            sign = line[:1]
            if sign == "-":
                old_left -= 1
            elif sign == "+":
                new_left -= 1
            elif sign == "\\":  # "\ No newline at end of file"
                continue
            else:  # context line (a blank context line may have lost its leading space)
                old_left -= 1
                new_left -= 1
                continue
            if line[1:].strip():
                kept.append(line)
            continue
        header = _HUNK_HEADER.match(line)
        if header:
            old_left = int(header.group(1) or 1)
            new_left = int(header.group(2) or 1)
    return kept


def _changed_lines_without_hunks(lines: list[str]) -> list[str]:
    """SERA's rule, for hand-written change lists that have no hunk headers to count by."""
    return [line for line in lines
            if line[:1] in "+-" and not line.startswith(("---", "+++")) and line[1:].strip()]


def line_recall(target_patch: str, produced_patch: str) -> float | None:
    """Fraction of the target's changed lines found in the produced patch (multiset match; file names ignored).

    None when the target has no changed lines: there is nothing to verify against.
    """
    target = changed_lines(target_patch)
    if not target:
        return None
    available = Counter(changed_lines(produced_patch))
    matches = 0
    for line in target:
        if available[line] > 0:
            available[line] -= 1
            matches += 1
    return matches / len(target)


def is_resolved(target_patch: str, produced_patch: str, threshold: float) -> bool:
    """SERA's verdict: a non-empty produced patch whose recall of the target reaches the threshold."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold!r}")
    if not produced_patch.strip():
        return False
    recall = line_recall(target_patch, produced_patch)
    return recall is not None and recall >= threshold


def verify(instance_id: str, target_patch: str, produced_patch: str, threshold: float) -> Verdict:
    from sera_ops.records import Verdict

    return Verdict(
        instance_id=instance_id,
        recall=line_recall(target_patch, produced_patch),
        threshold=threshold,
        resolved=is_resolved(target_patch, produced_patch, threshold),
        target_lines=len(changed_lines(target_patch)),
        produced_lines=len(changed_lines(produced_patch)),
    )


def patch_fingerprint(patch: str) -> str:
    """Two patches that change the same lines of the same files get the same fingerprint, whatever their context
    lines, hunk offsets or whitespace-only changes."""
    sections = re.split(r"^(?=diff --git )", patch, flags=re.MULTILINE)
    parts = [f"{section.splitlines()[0] if section.startswith('diff --git ') else ''}\n"
             + "\n".join(line.rstrip() for line in changed_lines(section)) for section in sections if section.strip()]
    return hashlib.sha256("\n\0".join(sorted(parts)).encode()).hexdigest()
