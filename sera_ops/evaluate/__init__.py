"""Stage 9, evaluation: held-out tasks and models to compare in, a per-repository report (and task exports) out.

`holdout` decides, before any data is made, which start functions (and commits) are held out; the pipeline turns
their instances into `EvalTask`s. `guide` writes the repository guide of the zero-training baseline, `harness` runs
and scores one model's episodes on the tasks, `report` puts the models side by side, and `exports` writes the tasks
for Harbor and swebench.
"""
