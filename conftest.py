"""pytest's root: the fixtures every test folder shares (tests/ and each family folder's tests/)."""

pytest_plugins = ["tests.fixtures", "tests.stack_fixtures"]
