"""Test session set-up: a private Airflow home and mini-swe-agent config dir, set before anything imports them."""
import os
import pathlib
import tempfile

from tests.support import ROOT

_SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="sera-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SCRATCH / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["MSWEA_GLOBAL_CONFIG_DIR"] = str(_SCRATCH / "mswea")
os.environ["MSWEA_SILENT_STARTUP"] = "1"
os.environ["MSWEA_CONFIGURED"] = "true"

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata DB in the session's private AIRFLOW_HOME (dag.test needs one)."""
    airflow = pathlib.Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    return os.environ["AIRFLOW_HOME"]
