"""docs/grpc.md: the official Python SDK in a process of its own, against the app
of grpc_embedded.py:

    DAPR_GRPC_PORT=50001 DAPR_HTTP_PORT=8000 python grpc_client.py
"""

# --8<-- [start:client]
import json

from dapr.clients import DaprClient

# The constructor waits for GET /v1.0/healthz/outbound on DAPR_HTTP_PORT (the app's
# port); the calls go over gRPC to DAPR_GRPC_PORT.
with DaprClient() as client:
    client.publish_event(
        pubsub_name="pubsub",
        topic_name="orders",
        data=json.dumps({"id": "o-1", "quantity": 2}),
        data_content_type="application/json",
    )
    metadata = client.get_metadata()
    components = [component.name for component in metadata.registered_components]
    print(json.dumps({"app_id": metadata.application_id, "components": components}))
# --8<-- [end:client]
