"""Stage 1, sources: a repository's code in, commits and clean per-commit snapshots out.

`repos` clones or reads a local or remote git repository, selects commits and snapshots each one; `samples` builds
the bundled sample repositories from their packaged files; `mirror` pushes the repository and the selected commits
to a GitHub organisation (private by default).
"""
