"""`python -m infra.cli`: the `sessiond` command."""

import sys

from infra.cli.main import main

sys.exit(main())
