"""`python -m fastapi_dapr sidecar ...`: the `fastapi-dapr` command."""

import sys

__all__: list[str] = []


def run() -> int:
    from .sidecar.cli import main  # the sidecar side's command, loaded when it is run

    return main()


if __name__ == "__main__":
    sys.exit(run())
