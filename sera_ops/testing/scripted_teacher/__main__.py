"""`python -m sera_ops.testing.scripted_teacher`: runs the command line (cli.py), which serves until SIGTERM."""

from sera_ops.testing.scripted_teacher.cli import main

if __name__ == "__main__":
    main()
