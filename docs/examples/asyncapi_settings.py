from fastapi import FastAPI

from fastapi_dapr import Dapr

app = FastAPI()
# --8<-- [start:serve]
Dapr(app, asyncapi_url="/events/asyncapi.json", asyncapi_docs_url=None)
# --8<-- [end:serve]
