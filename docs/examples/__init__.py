"""The code examples of the documentation, included in its pages with `--8<--` and
run by tests/test_docs_examples.py, so that the docs cannot drift from the code."""
