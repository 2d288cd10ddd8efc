"""A real Airflow deployment on loopback, started and stopped from Python (``make e2e`` and the bench).

This module is the harness's one import point for the e2e tests, the benches and
``tests/deploy/test_compose.py``: it re-exports the names of the modules the harness is split into,
each by concern (lowest first, none importing a later one at run time):

* ``procs``: child process groups (``start_proc``, ``Proc``, ``wait_for``, ``log``, ``tail``);
* ``shards``: small distinct chat shards (``write_shards``);
* ``services``: PostgreSQL, Redis and the fake Together server, each a private process;
* ``airflow_env``: the Airflow configuration of a deployment and the shipped ``WORKER_TUNING*``;
* ``client``: the REST API and metadata DB calls (``DAG_ID``, ``POOL``, ``DeploymentClient``);
* ``deployment``: ``LiveDeployment`` (what it starts and how it stops it) and ``Timings``;
* ``watch``: sampling a run until it ends (``watch_run``, ``RunWatch``, ``Sample``, ``describe``).
"""

from __future__ import annotations

from tests.e2e.airflow_env import WORKER_TUNING as WORKER_TUNING
from tests.e2e.airflow_env import WORKER_TUNING_CELERY as WORKER_TUNING_CELERY
from tests.e2e.airflow_env import WORKER_TUNING_LOCAL as WORKER_TUNING_LOCAL
from tests.e2e.client import DAG_ID as DAG_ID
from tests.e2e.client import POOL as POOL
from tests.e2e.client import DeploymentClient as DeploymentClient
from tests.e2e.deployment import LiveDeployment as LiveDeployment
from tests.e2e.deployment import Timings as Timings
from tests.e2e.procs import REPO as REPO
from tests.e2e.procs import VENV_BIN as VENV_BIN
from tests.e2e.procs import Proc as Proc
from tests.e2e.procs import free_port as free_port
from tests.e2e.procs import log as log
from tests.e2e.procs import start_proc as start_proc
from tests.e2e.procs import tail as tail
from tests.e2e.procs import wait_for as wait_for
from tests.e2e.services import FakeProcess as FakeProcess
from tests.e2e.services import Postgres as Postgres
from tests.e2e.services import Redis as Redis
from tests.e2e.services import apt_install as apt_install
from tests.e2e.services import ensure_pg_bin as ensure_pg_bin
from tests.e2e.services import ensure_redis_server as ensure_redis_server
from tests.e2e.services import find_pg_bin as find_pg_bin
from tests.e2e.shards import write_shards as write_shards
from tests.e2e.watch import MID_TRAINING_AFTER as MID_TRAINING_AFTER
from tests.e2e.watch import WAITING_TASKS as WAITING_TASKS
from tests.e2e.watch import WORKER_STATES as WORKER_STATES
from tests.e2e.watch import RunWatch as RunWatch
from tests.e2e.watch import Sample as Sample
from tests.e2e.watch import describe as describe
from tests.e2e.watch import trait_of_suffix as trait_of_suffix
from tests.e2e.watch import watch_run as watch_run
