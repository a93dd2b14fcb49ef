"""The pre-flight check of a model server: a dead, silent or key-refusing server fails a batch at once, naming the
server and its URL; a live one (even without a /models route) lets it go ahead."""
import re
import time

import pytest

from sera_ops import pipeline
from sera_ops.errors import is_permanent
from sera_ops.rollouts.teacher import TeacherUnreachable, preflight
from sera_ops.settings import ModelServer
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support.live_stack import free_port, silent_port
from tests.support.pipeline import make_context

KEY = "sk-preflight-test-0123"


def server(base_url: str, **overrides) -> ModelServer:
    return ModelServer(base_url=base_url, model="scripted-teacher", **overrides)


def test_a_live_server_passes_and_its_key_is_checked():
    with ScriptedTeacher(ScriptedTeacherConfig(api_key=KEY)) as teacher:
        preflight("scripted", server(teacher.url), KEY)
        refusal = rf"'scripted' at {re.escape(teacher.url)} refused the API key \(HTTP 401\)"
        with pytest.raises(TeacherUnreachable, match=refusal) as refused:
            preflight("scripted", server(teacher.url), "sk-wrong")
        assert is_permanent(refused.value)
        assert teacher.stats["agent"] == 0  # GET /models is not a chat request


def test_a_server_without_a_models_route_is_up():
    with ScriptedTeacher() as teacher:
        preflight("scripted", server(f"{teacher.address}/elsewhere"), None)  # 404: it answered, so go ahead


def test_nothing_listening_fails_at_once_naming_server_and_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(TeacherUnreachable, match=rf"model server 'glm' at {re.escape(url)} cannot be reached") as dead:
        preflight("glm", server(url, timeout_s=300, max_retries=5), None)
    assert time.monotonic() - started < 5 and not is_permanent(dead.value)


def test_a_server_that_never_answers_times_out_once_not_per_retry():
    with silent_port() as port:
        url = f"http://127.0.0.1:{port}/v1"
        started = time.monotonic()
        silence = rf"'hung' at {re.escape(url)} did not answer GET /models within 1 s"
        with pytest.raises(TeacherUnreachable, match=silence):
            preflight("hung", server(url, timeout_s=1, max_retries=5), None)
        assert time.monotonic() - started < 3  # one request; the server's own 5 retries are not spent


@pytest.mark.parametrize("stage", [pipeline.rollout_one, pipeline.synthesize, pipeline.rollout_two])
def test_batch_stages_check_their_server_before_touching_any_instance(tmp_path, stage):
    url = f"http://127.0.0.1:{free_port()}/v1"
    ctx = make_context(tmp_path, url)
    with pytest.raises(TeacherUnreachable, match=rf"'scripted' at {re.escape(url)}"):
        stage(ctx, "b0000")
    assert not list(tmp_path.rglob("*.error.json"))
