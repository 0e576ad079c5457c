"""The sidecar side: Dapr's API served in process (embedded mode) or for an app in any
language (`fastapi-dapr sidecar`). An app under a real daprd loads none of it.

Nothing here is public API: import from `fastapi_dapr`.
"""
