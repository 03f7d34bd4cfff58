"""gunicorn's logger for the API: the access and error logs never show the node token or another secret.

Clients pass the token as `?token=`; gunicorn's access log prints the request line with its query, and a
Referer header may carry it too. Every line both logs write goes through the redaction of shared.safety.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.glogging import Logger

from shared.safety import redact_handlers
from shared.settings import Settings, SettingsError


def _secrets() -> list[str]:
    try:
        return Settings.from_env(os.environ).secrets
    except SettingsError:
        return []  # the CLI refuses bad settings before gunicorn starts; the patterns still apply


class RedactingLogger(Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        secrets = _secrets()
        root = logging.getLogger()
        if not root.handlers:
            # the app's own warnings would go to logging's last-resort handler, which nothing can mask
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(handler)
        for log in (self.error_log, self.access_log, root):
            redact_handlers(log, secrets)
