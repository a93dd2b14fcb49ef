"""Packaged prompt data: the rollout-one contract, render/match round trips, prompt rendering and data loading."""

import json

import jinja2
import pytest
from jinja2 import meta

from sera_ops import prompts

CONTRACT = "`{{ start_fn }}` in `{{ start_fn_file }}`"
NAMES = [
    ("parse", "parse.py"),
    ("Class.method", "pkg/sub/mod.py"),
    ("Outer.Inner.__init__", "src/deep/nested/package/module_name.py"),
    ("_private_helper2", "lib/util-tools/io_helpers.py"),
]


def test_there_are_51_templates_generic_first():
    templates = prompts.rollout_one_templates()
    assert len(templates) == prompts.ROLLOUT_ONE_COUNT == 51
    assert all(isinstance(t, str) and t == t.strip() for t in templates)
    assert len(set(templates)) == 51
    assert not templates[0].startswith("There appears to be an issue with")
    assert all(t.startswith("There appears to be an issue with") for t in templates[1:])


@pytest.mark.parametrize("index", range(51))
def test_template_keeps_the_contract_and_uses_only_the_two_variables(index):
    template = prompts.rollout_one_templates()[index]
    assert CONTRACT in template
    variables = meta.find_undeclared_variables(jinja2.Environment().parse(template))
    assert variables == {"start_fn", "start_fn_file"}
    assert "{%" not in template, "blocks would break the literal-piece matcher"


def test_themed_templates_follow_the_requested_theme_order():
    templates = prompts.rollout_one_templates()
    for index, keyword in [(1, "resource cleanup"), (6, "concurrency"), (13, "boundary"), (30, "duplicat"),
                           (47, "idempotency"), (50, "data flow")]:
        assert keyword in templates[index].split("related to")[0], index


@pytest.mark.parametrize("index", range(51))
@pytest.mark.parametrize(("start_fn", "start_fn_file"), NAMES)
def test_render_then_match_round_trip(index, start_fn, start_fn_file):
    rendered = prompts.render_rollout_one(index, start_fn, start_fn_file)
    assert f"`{start_fn}` in `{start_fn_file}`" in rendered
    assert "{{" not in rendered
    assert prompts.match_rollout_one(rendered) == (start_fn, start_fn_file)


@pytest.mark.parametrize("index", [0, 17, 50])
def test_match_finds_the_report_inside_a_wrapping_prompt(index):
    report = prompts.render_rollout_one(index, "Cache.evict", "cachelib/core/store.py")
    wrapper = prompts.agent_templates()["instance_template"]
    task = jinja2.Template(wrapper, undefined=jinja2.StrictUndefined).render(task=report, cwd="/testbed")
    assert prompts.match_rollout_one("Preamble text.\n" + task + "\nTrailing text.") == (
        "Cache.evict",
        "cachelib/core/store.py",
    )


def test_match_tolerates_reflowed_whitespace():
    report = prompts.render_rollout_one(3, "Job.run", "jobs/runner.py")
    reflowed = report.replace(" ", "\n", 5).replace(". ", ".  ")
    assert prompts.match_rollout_one(reflowed) == ("Job.run", "jobs/runner.py")


def test_match_requires_the_same_function_everywhere_in_the_report():
    report = prompts.render_rollout_one(3, "Job.run", "jobs/runner.py")
    tampered = report.replace("`Job.run` itself", "`Job.stop` itself")
    assert prompts.match_rollout_one(tampered) is None


def test_unrelated_text_does_not_match():
    assert prompts.match_rollout_one("Fix the typo 'Helo' in `hello.py` so that greet() says Hello.") is None
    assert prompts.match_rollout_one(prompts.demo_issues()[0]) is None
    assert prompts.match_rollout_one("") is None


@pytest.mark.parametrize("index", [-1, 51])
def test_render_rejects_out_of_range_indices(index):
    with pytest.raises(IndexError):
        prompts.render_rollout_one(index, "f", "f.py")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reasoning...\n<output>yes</output>", "yes"),
        ("<OUTPUT>\n  No \n</Output>", "No"),
        ("<output>first</output> and <output>second</output>", "first"),
        ("<output>\n# Title\n\n  indented line\n</output>", "# Title\n\n  indented line"),
        ("< output >spaced</ output >", "spaced"),
        ("<output></output>", ""),
        ("no tags at all", None),
        ("<output>never closed", None),
    ],
)
def test_extract_output(text, expected):
    assert prompts.extract_output(text) == expected


STEPS = [
    {"action": "grep -rn 'def evict' cachelib", "observation": "cachelib/core/store.py:40:    def evict(self):"},
    {"action": "python repro.py", "observation": "KeyError: 'expires'", "response": "extra keys are ignored"},
    {"action": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"},
]
PATCH = (
    "diff --git a/cachelib/core/store.py b/cachelib/core/store.py\n"
    "-        del self._data[k]\n"
    "+        self._data.pop(k, None)\n"
)


def _step_positions(text):
    return [text.index(f"Step {number}") for number in (1, 2, 3)]


def test_judge_prompt_shows_task_numbered_steps_and_patch():
    text = prompts.render_judge("Something is off in `Cache.evict`.", STEPS, PATCH)
    assert "Something is off in `Cache.evict`." in text
    assert _step_positions(text) == sorted(_step_positions(text))
    assert "grep -rn 'def evict' cachelib" in text and "KeyError: 'expires'" in text
    assert "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT" in text
    assert PATCH.strip() in text
    assert "extra keys are ignored" not in text
    assert '"action"' not in text, "steps are rendered readably, not as raw JSON"
    assert "<output></output>" in text


def test_judge_prompt_marks_an_empty_patch():
    text = prompts.render_judge("task", STEPS, "  \n")
    assert "the agent left no changes" in text


def test_synth_prompt_shows_steps_patch_and_demonstration():
    demo = prompts.demo_issues()[5]
    text = prompts.render_synth_pr(STEPS, PATCH, demo)
    assert demo in text
    assert PATCH.strip() in text
    assert "KeyError: 'expires'" in text
    assert _step_positions(text) == sorted(_step_positions(text))
    assert "<output></output>" in text


def test_steps_without_action_are_refused():
    with pytest.raises(ValueError, match="step 2"):
        prompts.render_judge("task", [{"action": "ls", "observation": ""}, {"observation": "x"}], PATCH)


def test_system_messages_are_distinct_and_non_empty():
    assert prompts.JUDGE_SYSTEM.strip() and prompts.WRITER_SYSTEM.strip()
    assert prompts.JUDGE_SYSTEM != prompts.WRITER_SYSTEM


def test_packaged_demo_issues_are_varied_and_well_formed():
    issues = prompts.demo_issues()
    assert len(issues) >= 100
    for issue in issues:
        assert 80 <= len(issue) <= 2000
        title, blank, body = issue.split("\n", 2)
        assert title.strip() and blank == "" and body.strip()
    assert sum("```" in issue for issue in issues) >= 30
    assert sum("```" not in issue for issue in issues) >= 30
    assert sum("Traceback" in issue for issue in issues) >= 5
    assert sum(len(issue) < 200 for issue in issues) >= 10  # terse reports
    assert sum("- [" in issue for issue in issues) >= 3  # issue-form checklists


def test_load_demo_issues_reads_a_user_pool(tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps(["Title\n\nBody of the first issue.", "Second"]), encoding="utf-8")
    assert prompts.load_demo_issues(pool) == ["Title\n\nBody of the first issue.", "Second"]
    assert prompts.load_demo_issues(str(pool)) == ["Title\n\nBody of the first issue.", "Second"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json at all", "not valid JSON"),
        ('{"django": "issue"}', "got a JSON dict"),
        ('"just one string"', "got a JSON str"),
        ("[]", "empty list"),
        ('["fine", 3]', "item 1"),
        ('["fine", "   "]', "item 1"),
        ('["", "fine"]', "item 0"),
    ],
)
def test_load_demo_issues_rejects_bad_content(tmp_path, content, reason):
    pool = tmp_path / "bad_pool.json"
    pool.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=reason) as caught:
        prompts.load_demo_issues(pool)
    assert "bad_pool.json" in str(caught.value)
    assert "JSON list of non-empty strings" in str(caught.value)


def test_agent_templates_have_the_four_keys_and_the_submission_protocol():
    templates = prompts.agent_templates()
    assert set(templates) == set(prompts.AGENT_TEMPLATE_KEYS)
    instance = jinja2.Template(templates["instance_template"], undefined=jinja2.StrictUndefined).render(
        task="THE TASK", cwd="/testbed"
    )
    assert "<pr_description>\nTHE TASK\n</pr_description>" in instance
    assert "/testbed" in instance
    assert "\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n" in instance
    system = jinja2.Template(templates["system_template"], undefined=jinja2.StrictUndefined).render()
    assert system.strip()


def _observation(output: str, returncode: int = 0, exception_info: str = "") -> str:
    """Render the way mini-swe-agent does: a bare Template with StrictUndefined over `output`."""
    template = jinja2.Template(prompts.agent_templates()["observation_template"], undefined=jinja2.StrictUndefined)
    return template.render(output={"output": output, "returncode": returncode, "exception_info": exception_info})


def test_observation_shows_short_output_whole():
    text = _observation("hello\nworld\n", returncode=2)
    assert "<returncode>2</returncode>" in text
    assert "hello\nworld" in text
    assert "<warning>" not in text and "<exception>" not in text


def test_observation_reports_exceptions():
    text = _observation("", returncode=-1, exception_info="Command timed out after 60 s")
    assert "<exception>Command timed out after 60 s</exception>" in text
    assert "<returncode>-1</returncode>" in text


def test_observation_just_below_the_limit_is_not_elided():
    text = _observation("x" * 9999)
    assert "x" * 9999 in text and "<warning>" not in text


def test_observation_elides_the_middle_of_long_output():
    head, middle, tail = "H" * 5000, "M" * 2345, "T" * 5000
    text = _observation(head + middle + tail)
    assert "<warning>" in text
    assert head in text and tail in text
    assert "MMMMM" not in text
    assert "2345 characters elided" in text


def test_observation_at_exactly_the_limit_elides_nothing():
    text = _observation("a" * 5000 + "b" * 5000)
    assert "<warning>" in text and "0 characters elided" in text


def test_format_error_template_explains_both_call_formats():
    template = jinja2.Template(prompts.agent_templates()["format_error_template"], undefined=jinja2.StrictUndefined)
    text = template.render(error="No tool calls found in the response.")
    assert "No tool calls found in the response." in text
    assert "```mswea_bash_command" in text and "bash tool" in text
    assert "cut off" not in text
    assert "cut off" in template.render(error="x", finish_reason="length", actions=[])


def test_retries_get_a_template_not_tried_before_and_the_order_is_reproducible():
    from sera_ops.synth.writer import pick_distinct

    picks = [pick_distinct(prompts.ROLLOUT_ONE_COUNT, 7, "inst-1", "template", attempt=a) for a in range(10)]
    assert len(set(picks)) == 10
    assert picks == [pick_distinct(prompts.ROLLOUT_ONE_COUNT, 7, "inst-1", "template", attempt=a) for a in range(10)]
    assert picks != [pick_distinct(prompts.ROLLOUT_ONE_COUNT, 8, "inst-1", "template", attempt=a) for a in range(10)]
