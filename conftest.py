"""The plugins of the whole test run (tests/ and example_app/): the marker rule."""

pytest_plugins = ["tests.markers"]
