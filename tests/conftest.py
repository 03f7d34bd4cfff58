"""Shared pytest configuration: fixture modules every test package can use."""

pytest_plugins = ["tests.support.s3_server", "tests.support.farm"]
