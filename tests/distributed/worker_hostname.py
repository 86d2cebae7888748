"""``[core] hostname_callable`` of the distributed test deployment.

Both Celery workers run on this one machine, so ``socket.getfqdn()`` would give them the same name
in every task instance's ``hostname``. Each worker's environment names its "machine" in
``MAAS_DIST_HOSTNAME``; the other components keep the real name.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("MAAS_DIST_HOSTNAME") or socket.getfqdn()
