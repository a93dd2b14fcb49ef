"""The command line: `python -m sera_ops.testing.scripted_teacher` serves a scripted teacher until SIGTERM or SIGINT.

docker-compose's `scripted` profile and users' dry runs start it this way; it prints the base URL once, so a caller
that asked for `--port 0` learns the port.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from sera_ops.testing.scripted_teacher.config import ScriptedTeacherConfig
from sera_ops.testing.scripted_teacher.server import ScriptedTeacher


def _parse_modes(text: str) -> dict[str, float]:
    modes: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, weight = item.partition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"expected mode=weight, got {item!r}")
        try:
            modes[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {weight!r}") from None
    return modes


def main(argv: list[str] | None = None) -> None:
    """Serve the scripted teacher until SIGTERM or SIGINT; prints the base URL once."""
    from sera_ops.testing import scripted_teacher  # the package's summary is the description

    parser = argparse.ArgumentParser(prog="python -m sera_ops.testing.scripted_teacher",
                                     description=scripted_teacher.__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--model", default=ScriptedTeacherConfig.model)
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="require 'Authorization: Bearer <key>' with the key read from this environment variable")
    parser.add_argument("--rollout-two-modes", type=_parse_modes, default={"full": 1.0},
                        help="weights per mode, e.g. full=0.7,partial=0.2,none=0.1")
    parser.add_argument("--judge-reject-rate", type=float, default=0.0)
    parser.add_argument("--judge-reject-first-attempts", type=float, default=0.0,
                        help="share of rollout one's first attempts at a function that the judge rejects")
    parser.add_argument("--noop-first-attempt", action="store_true",
                        help="make a comment-only edit in rollout one's first attempt at a function")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with 500/429")
    parser.add_argument("--stall-rate", type=float, default=0.0, help="share of requests that stall first")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds a stalled request waits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is empty or not set")
    try:
        config = ScriptedTeacherConfig(
            model=args.model, api_key=api_key, rollout_two_modes=args.rollout_two_modes,
            judge_reject_rate=args.judge_reject_rate, judge_reject_first_attempts=args.judge_reject_first_attempts,
            noop_first_attempt=args.noop_first_attempt, latency_s=args.latency, error_rate=args.error_rate,
            stall_rate=args.stall_rate, stall_s=args.stall, seed=args.seed, host=args.host, port=args.port)
    except ValueError as error:
        parser.error(str(error))
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with ScriptedTeacher(config) as teacher:
        print(teacher.url, flush=True)
        done.wait()
