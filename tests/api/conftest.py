"""An app for tests that call the Flask app in-process (no server): nothing connects at creation, so routes
that need neither Redis nor the store (`/`, the web assets, `/swagger.json`) answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from api.app import create_app
from shared.settings import Settings


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    env = {
        "ODM_FARM_REDIS_URL": "redis://127.0.0.1:1/0",
        "ODM_FARM_DATA_DIR": str(tmp_path),
        "ODM_FARM_TOKEN": "t",
    }
    return create_app(Settings.from_env(env), check_store=False)
