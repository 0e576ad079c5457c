"""`python -m fastapi_dapr sidecar ...`: the `fastapi-dapr` command."""

import sys

from ._cli import main

sys.exit(main())
