"""The dataset viewer in a real browser: headless Chromium (Debian's `chromium`) against the live stack, where the one
user has to log in. Opening /sera/ lands on Airflow's login page; after signing in there the browser is back on the
viewer, opens a run and one of its instances, and the test reads what was rendered and takes full-page screenshots
(left under the test's tmp dir). Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in NUL on the browser's fds 3 and 4), so no port, driver or browser download is needed."""
import base64
import fcntl
import json
import os
import secrets
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from tests.support import ROOT
from tests.support.live_stack import TRAINING_DAG, live_stack
from tests.support.parts import require

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium")
# What Chromium needs on these machines (headless, as root, no network beyond loopback): see .ci/run's packages.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]
USER = "sera-reviewer"


class Browser:
    """One Chromium and one page in it; `call` sends a DevTools command to the page and returns its result."""

    def __init__(self, profile: Path):
        self._commands_read, self._commands = os.pipe()
        self._replies, self._replies_write = os.pipe()
        self.process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=self._onto_fds_3_and_4, pass_fds=(3, 4),
                                        stdout=subprocess.DEVNULL, stderr=(profile.parent / "chromium.log").open("w"))
        os.close(self._commands_read)
        os.close(self._replies_write)
        self._buffer, self._next_id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)

    def _onto_fds_3_and_4(self) -> None:
        """In the child before exec: the pipe ends where Chromium expects them (first moved above 4, so that
        placing one cannot close the other)."""
        commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (self._commands_read, self._replies_write))
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    def call(self, method: str, timeout_s: float = 30, **params: Any) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:  # events and other replies are skipped: the test polls the page instead
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            poller = select.poll()  # not select(): a long test session may hand out descriptors above 1023
            poller.register(self._replies, select.POLLIN)
            ready = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
            chunk = os.read(self._replies, 1 << 20) if ready else b""
            assert chunk, "Chromium did not answer (timed out or exited; see chromium.log)"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 30) -> Any:
        """The value of `expression` once it is truthy, the page loaded."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(f"document.readyState === 'complete' && ({expression})")
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the page at {self.evaluate('location.href')} shows:\n"
                             + self.evaluate("document.body ? document.body.innerText : ''")[:2000])

    def type_into(self, selector: str, text: str) -> None:
        """Keyboard input, as a person types it (the login form is a React form that reads input events)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    def text(self) -> str:
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path) -> Path:
        """The whole page, not only the window."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close", timeout_s=10)
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self._commands)
            os.close(self._replies)


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """A live stack that asks for a login, after one small DAG run; yields (base URL, password, run directory)."""
    require("chromium")
    work = tmp_path_factory.mktemp("browser")
    password = secrets.token_urlsafe(12)
    with ScriptedTeacher() as teacher:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", work, teacher.url, storage_root=work / "store",
                                    overrides={"images": {"sandbox": "local"}})
        with live_stack(work, platform, login=(USER, password)) as stack:
            api = stack.api  # no training after the run: it is not looked at here, and would hold the CPUs
            api.wait_for(lambda: api.call("PATCH", f"/api/v2/dags/{TRAINING_DAG}", {"is_paused": True})[0] == 200, 120,
                         "the training DAG to be paused")
            run_id = api.trigger({"max_functions": 2})
            assert api.finish(run_id, 300) == "success"
            (run_dir,) = (work / "store" / "tinyledger" / "runs").iterdir()
            yield api.base, password, run_dir


def test_api_clients_get_401_and_browsers_the_login_page(viewer):
    base, _, _ = viewer
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/sera/", timeout=30)
    assert refused.value.code == 401 and json.load(refused.value) == {"detail": "Not authenticated"}
    page = urllib.request.Request(f"{base}/sera/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(page, timeout=30) as response:  # redirects followed, as a browser does
        assert response.url == f"{base}/auth/login?" + urlencode({"next": f"{base}/sera/"})


def test_log_in_open_a_run_and_an_instance(viewer, tmp_path):
    base, password, run_dir = viewer
    browser = Browser(tmp_path / "profile")
    try:
        browser.call("Page.navigate", url=f"{base}/sera/")
        browser.wait_for("location.pathname === '/auth/login' && !!document.querySelector('input[type=password]')",
                         "Airflow's login page")
        browser.type_into("input:not([type=password])", USER)
        browser.type_into("input[type=password]", password)
        browser.wait_for("!document.querySelector('button[type=submit]').disabled", "the form to accept the input")
        browser.click("button[type=submit]")
        browser.wait_for("location.pathname === '/sera/' && !!document.querySelector('h2#tinyledger')",
                         "the viewer after logging in")

        browser.click(f"a[href$='/{run_dir.name}']")
        browser.wait_for("!!document.querySelector('table.funnel')", "the run page")
        # the plots are images from the same login (the session cookie); each must have loaded and have pixels
        plots = browser.wait_for("[...document.images].every(i => i.complete) && "
                                 "[...document.images].map(i => [i.alt, i.naturalWidth])", "the plots to load")
        assert {alt for alt, _ in plots} >= {"recall.png", "turns.png", "tokens.png"} and all(w > 0 for _, w in plots)
        run_page = browser.text()
        stats = json.loads((run_dir / "dataset" / "stats.json").read_text())
        for stage, count in (("instances", 2), ("judged good", stats["judged_good"]), ("verified", stats["verified"])):
            assert f"{stage}\t{count}\t" in run_page, run_page
        assert "dataset_dir" not in run_page and str(run_dir) not in run_page
        browser.screenshot(tmp_path / "run.png")

        instance = sorted(p.name for p in (run_dir / "instances").iterdir())[0]
        browser.click(f"a[href$='/{run_dir.name}/{instance}']")
        browser.wait_for(f"document.querySelector('h1').innerText === {json.dumps(instance)}", "the instance page")
        instance_page = browser.text()
        assert "Rollout one: attempts and the judge" in instance_page and "judge's answer" in instance_page
        assert "Recall " in instance_page and "Rollout two: trajectory" in instance_page
        assert "<pr_description>" not in instance_page and "<returncode>" not in instance_page  # collapsed rows
        shot = browser.screenshot(tmp_path / "instance.png")
    finally:
        browser.close()
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
