"""Fixtures shared by the suite; the serving ones (a real Triton and the API) live in stack_fixtures.py."""

pytest_plugins = ["tests.stack_fixtures"]
