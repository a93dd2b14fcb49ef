"""The run store: where every stage's results live, on local disk or object storage.

`io` writes and reads files atomically (local paths or `s3://`/`gs://` URLs) and imports nothing of the project;
`layout` is the one module that names the store's files (`RepoStore`, `RunStore`) and reads and writes the typed
`records`; `views` gives read-only views for people (the viewer); `history` answers what earlier runs covered.
A file's presence means its step is done, so a retried or cleared task redoes only what is missing.
"""
