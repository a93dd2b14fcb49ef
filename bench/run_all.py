"""Run every benchmark script in bench/ in turn (each prints its own table)."""

import subprocess
import sys
from pathlib import Path

for script in sorted(Path(__file__).parent.glob("*.py")):
    if script.name != Path(__file__).name:
        print(f"## {script.stem}", flush=True)
        subprocess.run([sys.executable, str(script)], check=True)
