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


def url_without_password(url: str) -> str:
    """A URL as it may be logged or shown: ``user:password@`` becomes ``user:***@``; query values that
    often carry tokens (``token``, ``key``, ``password``, ``secret``) become ``***``."""
    import re
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = parts.query
    if query:
        secretish = re.compile(r"token|key|password|secret|sig", re.IGNORECASE)
        query = urlencode(
            [(k, "***" if secretish.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)],
            safe="*",
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
