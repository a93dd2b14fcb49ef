"""SERA data generation: repositories in, soft-verified SFT trajectories out.

The packages, in pipeline order: `settings` (what the YAML files say) → `sources` (a repository's commits, mirrored
to GitHub) → `build` (one image and one function inventory per commit) → `rollouts` (an agent driven by the teacher,
confined in a sandbox, with its spend accounted) → `synth` (the judge and the synthetic PR) → `verify` (changed-line
recall) → `dataset` (SFT records, card, curation) → `train` (SFT on the records). `pipeline` runs those stages over the
run store (`store`), whose typed records live in `records`. Every stage is a plain function over plain records;
Airflow only wires them (see dags/ and plugins/).
"""
