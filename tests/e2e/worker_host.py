"""``[core] hostname_callable`` for the e2e's Celery workers: the "machine" name each one reports.

Both workers run on this host, so ``socket.getfqdn()`` would give them one name; the task instances'
``hostname`` column is how the test sees which worker ran what.
"""

from __future__ import annotations

import os


def hostname() -> str:
    return os.environ["TRAIT_LORA_E2E_HOSTNAME"]
