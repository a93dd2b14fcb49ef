"""Test session set-up: a private Airflow home and mini-swe-agent config dir, set before anything imports them."""
import os
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
_SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="sera-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SCRATCH / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["MSWEA_GLOBAL_CONFIG_DIR"] = str(_SCRATCH / "mswea")
os.environ["MSWEA_SILENT_STARTUP"] = "1"
os.environ["MSWEA_CONFIGURED"] = "true"
