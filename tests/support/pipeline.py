"""A run on the bundled sample, without a scheduler: a local sandbox and the given (scripted) teacher."""
from __future__ import annotations

from pathlib import Path

from sera_ops import pipeline
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.settings import EvalSettings, load_platform, load_repos
from sera_ops.testing.dry_run import dry_run_platform
from tests.support import ROOT


def make_context(tmp_path: Path, teacher_url: str, run_id: str = "run-1", **repo_overrides) -> RunContext:
    platform_file = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher_url,
                                     storage_root=tmp_path / "store", overrides={"images": {"sandbox": "local"}})
    platform = load_platform(platform_file)
    spec = load_repos(platform)[0][0]
    # The sample holds tasks out for evaluation; tests of other stages count instances without them.
    spec = spec.model_copy(update={"eval": EvalSettings(), **repo_overrides})
    return RunContext.create(platform, spec, run_id, RunParams(max_functions=4))


def prepare(ctx: RunContext) -> list[str]:
    for commit in pipeline.select_commits(ctx):
        pipeline.build_image(ctx, commit)
        pipeline.inventory(ctx, commit)
    pipeline.sample(ctx)
    return pipeline.make_batches(ctx)
