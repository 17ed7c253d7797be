"""The `deconv` command line (`api.cli`: `deconv learn CONFIG --workers N --out DIR`). The HTTP service
(FastAPI), its Python client and the other subcommands come with issue #4."""
