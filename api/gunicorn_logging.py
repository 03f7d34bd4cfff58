"""gunicorn's logger for the API: the access and error logs never show the node token or another secret.

Clients pass the token as `?token=`; gunicorn's access log prints the request line with its query, and a
Referer header may carry it too. Every line both logs write goes through the redaction of shared.safety.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.glogging import Logger

from shared import events
from shared.safety import redact_handlers
from shared.settings import Settings, SettingsError


def _settings() -> Settings | None:
    try:
        return Settings.from_env(os.environ)
    except SettingsError:
        return None  # the CLI refuses bad settings before gunicorn starts; the patterns still apply


class RedactingLogger(Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        settings = _settings()
        secrets = settings.secrets if settings else []
        log_format = settings.log_format if settings else "plain"
        # the app's own lines (task events included) in the chosen format; without a root handler they
        # would go to logging's last-resort handler, which nothing can mask
        events.configure(log_format, secrets)
        for log in (self.error_log, self.access_log):
            if log_format == "json":
                for handler in log.handlers:
                    handler.setFormatter(events.formatter(log_format, secrets))
            redact_handlers(log, secrets)
