"""One TLS trust store per process for every Together client.

Building one (httpx reads certifi's CA bundle) cost ~25 ms, and every client paid it again: a worker
makes two per task, the triggerer one per trigger, a dag.test() run one per task instance. An
``ssl.SSLContext`` is meant to be shared by many connections and threads, so the clients share it.
It is httpx's own default context, built by httpx from the same environment (``SSL_CERT_FILE``,
``SSL_CERT_DIR``), so what is trusted does not change; a changed variable builds a new one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl


def shared_tls_context() -> ssl.SSLContext:
    from trait_lora import settings

    return _context(*settings.tls_trust_env())


@lru_cache(maxsize=4)
def _context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()  # reads SSL_CERT_FILE / SSL_CERT_DIR itself: the cache key
