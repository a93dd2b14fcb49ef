"""Packaged prompt data: vague rollout-one reports, judge and synthetic-PR prompts, demo issues, agent templates.

The wording lives in data files next to this module so it can be revised without touching the stages that use it;
this module only loads, renders and parses. Everything is read through importlib.resources so an installed wheel
works the same as the source tree.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROLLOUT_ONE_COUNT = 51

JUDGE_SYSTEM = (
    "You are a careful senior software engineer. You review code changes and judge whether they really fix the "
    "problem they were meant to fix."
)
WRITER_SYSTEM = (
    "You are an experienced open-source developer who writes realistic bug reports in the voice and style of the "
    "issues a project already has."
)

AGENT_TEMPLATE_KEYS = ("system_template", "instance_template", "observation_template", "format_error_template")

# trim/lstrip keep the {% for %} blocks of the .j2 prompts from leaving blank lines; the rollout-one templates have
# no blocks, so they render as plain substitution (which match_rollout_one relies on).
_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, autoescape=False)

# Placeholders that cannot occur in template text: rendering with them reveals each template's literal pieces.
_FN_MARK = "\x00start_fn\x00"
_FILE_MARK = "\x00start_fn_file\x00"
# A function or file name never spans lines or backticks (the templates always put them inside backticks).
_NAME_PATTERN = r"[^`\n]+?"

_OUTPUT_TAG = re.compile(r"<\s*output\s*>(.*?)<\s*/\s*output\s*>", re.IGNORECASE | re.DOTALL)


@functools.cache
def _read_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def _rollout_one() -> tuple[str, ...]:
    return tuple(yaml.safe_load(_read_text("rollout_one.yaml")))


def rollout_one_templates() -> list[str]:
    """The 51 vague bug-report templates (Jinja2 over `start_fn` and `start_fn_file`), generic one first."""
    return list(_rollout_one())


def render_rollout_one(index: int, start_fn: str, start_fn_file: str) -> str:
    """Render template `index`; a negative index is refused because it would silently pick from the end."""
    if not 0 <= index < ROLLOUT_ONE_COUNT:
        raise IndexError(f"rollout-one template index must be in 0..{ROLLOUT_ONE_COUNT - 1}, got {index}")
    return _template(_rollout_one()[index]).render(start_fn=start_fn, start_fn_file=start_fn_file)


@functools.cache
def _template(source: str) -> jinja2.Template:
    return _JINJA.from_string(source)


def _literal_pattern(text: str) -> str:
    """Regex for a literal piece that tolerates re-wrapped whitespace (a harness may reflow the prompt)."""
    return r"\s+".join(re.escape(word) for word in re.split(r"\s+", text))


def _pattern_for(template: str) -> re.Pattern[str]:
    rendered = _template(template).render(start_fn=_FN_MARK, start_fn_file=_FILE_MARK)
    pieces = re.split(f"({re.escape(_FN_MARK)}|{re.escape(_FILE_MARK)})", rendered)
    regex: list[str] = []
    groups_seen: set[str] = set()
    for piece in pieces:
        group = {_FN_MARK: "fn", _FILE_MARK: "file"}.get(piece)
        if group is None:
            regex.append(_literal_pattern(piece))
        elif group in groups_seen:
            regex.append(f"(?P={group})")
        else:
            regex.append(f"(?P<{group}>{_NAME_PATTERN})")
            groups_seen.add(group)
    return re.compile("".join(regex))


@functools.cache
def _rollout_one_patterns() -> tuple[re.Pattern[str], ...]:
    return tuple(_pattern_for(template) for template in _rollout_one())


def match_rollout_one(task: str) -> tuple[str, str] | None:
    """(start_fn, start_fn_file) if `task` contains a rendered rollout-one report, possibly wrapped in a longer prompt.

    Lets a scripted teacher or an analysis step recover which function a rollout-one task was about without
    carrying that information separately.
    """
    for pattern in _rollout_one_patterns():
        found = pattern.search(task)
        if found:
            return found["fn"], found["file"]
    return None


def _steps_for_prompt(agent_steps: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Keep only what the prompts show; a step without an observation (the final submit) renders as no output."""
    steps = []
    for number, step in enumerate(agent_steps, start=1):
        if "action" not in step:
            raise ValueError(f"agent step {number} has no 'action': expected a dict with 'action' and 'observation'")
        steps.append({"action": str(step["action"]), "observation": str(step.get("observation") or "")})
    return steps


def render_judge(initial_prompt: str, agent_steps: list[dict[str, Any]], patch: str) -> str:
    """User prompt asking whether the final patch is a valid fix for the (vague) initial task; answer yes/no."""
    return _template(_read_text("judge.j2")).render(
        initial_prompt=initial_prompt, agent_steps=_steps_for_prompt(agent_steps), patch=patch
    )


def render_synth_pr(agent_steps: list[dict[str, Any]], patch: str, demonstration_issue: str,
                    reveal_location: bool = False) -> str:
    """User prompt asking for an issue text, in the demonstration's style, that describes the bug the patch fixes.
    As in SERA, the report does not say where the code is unless `reveal_location` asks for it: finding it is what
    rollout two teaches."""
    return _template(_read_text("synth_pr.j2")).render(
        agent_steps=_steps_for_prompt(agent_steps), patch=patch, demonstration_issue=demonstration_issue,
        reveal_location=reveal_location,
    )


def extract_output(text: str) -> str | None:
    """Content of the first <output>...</output> block with outer whitespace removed; None when there is none."""
    found = _OUTPUT_TAG.search(text)
    return found.group(1).strip() if found else None


def _parse_issue_list(text: str, source: str) -> list[str]:
    expected = "a JSON list of non-empty strings (one demonstration issue each)"
    try:
        issues = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON ({error}); expected {expected}") from error
    if not isinstance(issues, list):
        raise ValueError(f"{source}: expected {expected}, got a JSON {type(issues).__name__}")
    if not issues:
        raise ValueError(f"{source}: expected {expected}, got an empty list")
    for index, issue in enumerate(issues):
        if not isinstance(issue, str) or not issue.strip():
            raise ValueError(f"{source}: item {index} is {issue!r}; expected {expected}")
    return issues


@functools.cache
def _demo_issues() -> tuple[str, ...]:
    return tuple(_parse_issue_list(_read_text("demo_issues.json"), "sera_ops/prompts/demo_issues.json"))


def demo_issues() -> list[str]:
    """The packaged demonstration issues, the default style pool for the synthetic-PR writer."""
    return list(_demo_issues())


def load_demo_issues(path: str | Path) -> list[str]:
    """A user-supplied demonstration pool; bad content is an error rather than a silent fallback to the default."""
    path = Path(path)
    return _parse_issue_list(path.read_text(encoding="utf-8"), str(path))


@functools.cache
def _agent_templates() -> tuple[tuple[str, str], ...]:
    loaded = yaml.safe_load(_read_text("agent.yaml"))
    return tuple((key, loaded[key]) for key in AGENT_TEMPLATE_KEYS)


def agent_templates() -> dict[str, str]:
    """mini-swe-agent templates for both rollouts: system, instance, observation and format-error."""
    return dict(_agent_templates())
