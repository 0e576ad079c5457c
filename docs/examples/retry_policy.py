from fastapi import FastAPI

app = FastAPI()

# --8<-- [start:retry]
from fastapi_dapr import Dapr, RetryPolicy

Dapr(app, retry=RetryPolicy(policy="constant", duration=2.0, max_retries=5,
                            http_status_codes=frozenset({429, 503})))  # fmt: skip
# --8<-- [end:retry]
