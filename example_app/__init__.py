"""A small checkout service built with fastapi-dapr: see main.py."""
