"""Stage 4–5, rollouts: an instance's task and image in, an agent trajectory and its patch out.

`teacher` is the OpenAI-compatible client of a teacher model; `spend` accounts tokens and cost per instance and
enforces cost limits; `sandbox` confines the teacher's commands (a container, or bubblewrap locally); `episode` runs
one mini-swe-agent episode in a sandbox and records it as a `records.Rollout`.
"""
