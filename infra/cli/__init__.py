"""The `sessiond` command line (`python -m infra.cli` runs it too)."""
