"""Keeping a secret out of a library's own log lines for the length of one call."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _Redact(logging.Filter):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "***"), ()
        return True


@contextlib.contextmanager
def redacted(logger_prefix: str, secret: str | None) -> Iterator[None]:
    """Keep ``secret`` out of the SDK's own DEBUG request logs (it logs each request body), even
    where Airflow's masker is not configured (``dag.test``, a script)."""
    if not secret:
        yield
        return
    names = [
        n for n in logging.root.manager.loggerDict if n == logger_prefix or n.startswith(logger_prefix + ".")
    ]
    loggers = [logging.getLogger(n) for n in [logger_prefix, *names]]
    redact = _Redact(secret)
    for logger in loggers:
        logger.addFilter(redact)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(redact)
