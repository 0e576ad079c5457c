"""`python -m fastapi_dapr sidecar ...`: the `fastapi-dapr` command."""

import sys

from .sidecar.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
