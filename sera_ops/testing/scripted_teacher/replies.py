"""The judge's verdict and the synthetic-PR writer's bug report: the teacher's two non-agent roles.

The judge turns down empty patches and patches that change no Python code, and a configured share of the rest; the
writer describes the symptom of the edit the agent's note names. Rollout two reads that symptom back from the PR
(`SYMPTOM_MARKERS`) to make the same edit.
"""

from __future__ import annotations

import io
import re
import tokenize

from sera_ops.testing.scripted_teacher.config import LOCATE_NOTE, ScriptedTeacherConfig, stable_fraction

INITIAL_PROMPT = re.compile(r"<initial_prompt>(.*?)</initial_prompt>", re.DOTALL)
"""Where the judge's prompt quotes the episode's task (the server tells a first attempt by it)."""
_EDIT_DONE = re.compile(r"^# rewrite \S+ line \d+ \(.*\): (\w+)(?: ([\w.]+))?$", re.MULTILINE)
"""The note on the edit command (agent.py's `_edit_command`): the kind of edit and its subject, for the PR writer."""
_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_SYMPTOMS = {
    "compare": "Calling `{fn}`{where} treats inputs on one side of the check it makes like those on the other "
               "side, as if a comparison were the wrong way round.",
    "constant": "Calling `{fn}`{where} is off by one: what it produces is always one step away from what I "
                "expect.",
    "negate": "Calling `{fn}`{where} takes the wrong branch: the case it should treat specially goes down the "
              "ordinary path, and the ordinary case gets the special treatment.",
    "guard": "Calling `{fn}`{where} with `{subject}` set to None does not fail up front: it carries on and breaks "
             "later with a confusing error far from the call. I expected a ValueError saying that `{subject}` must "
             "not be None.",
}
"""What a user of the function sees before each kind of fix, as the synthetic PR reports it."""
_REVEAL_LOCATION = "the file it lives in"
"""Words of the writer prompt's guideline that asks for the location (synth.reveal_location)."""
SYMPTOM_MARKERS = {kind: max(re.split(r"\{\w+\}", text), key=len) for kind, text in _SYMPTOMS.items()}
"""The longest fixed piece of each symptom: how rollout two tells from the PR which fix it asks for."""
_VAGUE_SYMPTOM = ("Calling `{fn}`{where} gives unexpected results. The value it hands back does not match what "
                  "its callers expect, so code built on top of it misbehaves.")


def _hunks(patch: str) -> list[tuple[str, list[str], list[str]]]:
    """(file, old side, new side) of every hunk of a unified diff, context lines on both sides."""
    hunks: list[tuple[str, list[str], list[str]]] = []
    path, old_left, new_left = "", 0, 0
    for line in patch.splitlines():
        if old_left > 0 or new_left > 0:
            sign = line[:1]
            if sign == "\\":  # "\ No newline at end of file"
                continue
            _, before, after = hunks[-1]
            if sign != "+":  # a removed or context line (a blank context line may have lost its space)
                before.append(line[1:])
                old_left -= 1
            if sign != "-":
                after.append(line[1:])
                new_left -= 1
        elif line.startswith("diff --git "):
            path = line.rsplit(" b/", 1)[-1].rstrip('"')  # the new name (a quoted header keeps its whole line)
        elif header := _HUNK_HEADER.match(line):
            old_left, new_left = int(header.group(1) or 1), int(header.group(2) or 1)
            hunks.append((path, [], []))
    return hunks


def _code_line(line: str) -> str:
    """A line's tokens without comment and spacing, led by its indentation width; "" for a blank or comment line.
    A line that does not tokenize on its own (part of a bracket or string) only loses a trailing quote-free comment."""
    text = line.strip()
    try:
        body = " ".join(token.string for token in tokenize.generate_tokens(io.StringIO(text).readline)
                        if token.type not in _LAYOUT)
    except (tokenize.TokenError, SyntaxError):
        body = " ".join(re.sub(r"#[^'\"]*$", "", text).split())
    return f"{len(line) - len(line.lstrip())}:{body}" if body else ""


def _changes_python_code(patch: str) -> bool:
    """Whether a hunk of a .py file differs in more than comments, blank lines and spacing; when none does, no
    syntax tree changed. Read line by line, so a hunk that starts inside a string or bracket is no problem."""
    def code(lines: list[str]) -> list[str]:
        return [text for text in map(_code_line, lines) if text]

    return any(path.endswith(".py") and code(before) != code(after) for path, before, after in _hunks(patch))


def judge_reply(prompt: str, config: ScriptedTeacherConfig, first_attempt: bool) -> str:
    """No for an empty patch, for one that changes no Python code, and for the configured share of the rest."""
    start = prompt.rfind("<patch>")
    patch = prompt[start:prompt.rfind("</patch>")] if start >= 0 else ""
    if not re.search(r"^diff --git ", patch, re.MULTILINE):
        return "The final patch is empty, so the agent did not change anything.\n<output>no</output>"
    if not _changes_python_code(patch):
        return ("The patch only touches comments, blank lines or spacing (or no Python at all): the code does exactly "
                "what it did before, so it cannot fix anything.\n<output>no</output>")
    first_share = config.judge_reject_first_attempts if first_attempt else 0.0
    if (stable_fraction(config.seed, "judge", prompt) < config.judge_reject_rate
            or stable_fraction(config.seed, "judge-first", prompt) < first_share):
        return "The patch changes code, but I am not convinced it addresses the reported problem.\n<output>no</output>"
    return "The patch changes the function the task points at and stays consistent with it.\n<output>yes</output>"


def writer_reply(prompt: str) -> str:
    """A bug report, in the demonstration's heading style, of the symptom that the agent's edit (its note) removes."""
    note = LOCATE_NOTE.search(prompt)
    if note is None:
        return "I could not tell from the trajectory which function the change is about."
    start_fn, path = note.groups()
    edit = _EDIT_DONE.search(prompt)
    kind, subject = edit.groups() if edit else (None, None)
    demonstration = prompt[prompt.rfind("<demonstration_issue>"):] if "<demonstration_issue>" in prompt else ""
    heading = re.search(r"^(#{1,6})[ \t]+\S", demonstration, re.MULTILINE)
    lines = [f"Wrong behaviour of `{start_fn}`", ""]
    if heading:
        lines += [f"{heading.group(1)} Description", ""]
    where = f" in `{path}`" if _REVEAL_LOCATION in prompt else ""  # SERA's PRs leave the agent to find the code
    lines.append(_SYMPTOMS.get(kind, _VAGUE_SYMPTOM).format(fn=start_fn, where=where, subject=subject))
    return "<output>\n" + "\n".join(lines) + "\n</output>"
