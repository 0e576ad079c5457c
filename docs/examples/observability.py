from fastapi import FastAPI

app = FastAPI()

# --8<-- [start:metrics]
from fastapi_dapr import Dapr

dapr = Dapr(app, app_id="checkout", metrics=True)
# --8<-- [end:metrics]


def use_json_logs() -> None:
    # --8<-- [start:logs]
    import logging

    from fastapi_dapr import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(app_id="checkout"))
    logging.getLogger("fastapi_dapr").addHandler(handler)
    # --8<-- [end:logs]


def quieter_logs() -> None:
    # --8<-- [start:levels]
    import logging

    # No INFO lines (the start-up line): warnings and errors only.
    logging.getLogger("fastapi_dapr").setLevel(logging.WARNING)
    # No line per failed attempt or dropped message: only messages given up or
    # not settled.
    logging.getLogger("fastapi_dapr.delivery").setLevel(logging.ERROR)
    # --8<-- [end:levels]
