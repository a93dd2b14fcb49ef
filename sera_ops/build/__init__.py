"""Stage 2–3, build: a commit snapshot in, a container image and a function inventory out.

`images` builds the commit's image (a shared dependency layer, then the commit's own) and smoke-checks it;
`registry` pushes and pulls it on the configured registry; `existing` uses images that already exist (SWE-bench,
SWE-smith, your own) instead of building; `inventory` lists the start functions (Python's `ast`) and samples
the run's instances from them.
"""
