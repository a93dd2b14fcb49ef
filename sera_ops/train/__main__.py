"""`python -m sera_ops.train` (also under `accelerate launch ... -m sera_ops.train`): runs the command line (cli.py)."""

from sera_ops.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
