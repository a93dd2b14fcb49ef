"""Evaluation: held-out tasks, episodes per model, the report, and exports for other harnesses.

`holdout` decides, before any data is made, which start functions (and commits) are held out; the pipeline turns
their instances into `EvalTask`s. `guide` writes the repository guide of the zero-training baseline, `harness` runs
and scores one model's episodes on the tasks, `report` puts the models side by side, and `exports` writes the tasks
for Harbor and swebench.
"""
