"""gunicorn settings for a HealthLedger API container: `gunicorn -c deploy/gunicorn.conf.py`.

The API replicas run only the web workers; the chain side runs apart (`healthledger relay work`, any number of
replicas: leases keep indexing and anchoring to one at a time) against a consortium node (HEALTHLEDGER_CHAIN_URL).
"""

import multiprocessing
import os

from healthledger.api.operations import mark_replica_started
from healthledger.observability import enable_multiprocess, gunicorn_log_config, mark_worker_dead

wsgi_app = "healthledger.app:create_app()"
bind = os.environ.get("HEALTHLEDGER_BIND", "0.0.0.0:8080")
# gthread workers: one per core (the work is CPU-bound crypto and JSON), threads overlap database waits.
workers = int(os.environ.get("HEALTHLEDGER_WORKERS") or multiprocessing.cpu_count())
# gthread, taking only its share of the connections: all workers accept on one socket, and the kernel may hand
# one worker every connection of a burst (healthledger/balanced_worker.py).
worker_class = "healthledger.balanced_worker.BalancedThreadWorker"
threads = int(os.environ.get("HEALTHLEDGER_THREADS", "4"))
keepalive = 5
timeout = 60  # a transaction Bundle of 10 MiB takes seconds; a worker stuck longer is restarted
graceful_timeout = 30  # SIGTERM (a rolling update): finish requests in flight, then exit
max_requests = 20_000  # recycle workers now and then (memory held by caches), spread out:
max_requests_jitter = 2_000
preload_app = False  # each worker builds its own app (connections and caches are per process)
accesslog = None  # the application logs each request as JSON, by route, with its request id
logconfig_dict = gunicorn_log_config()
forwarded_allow_ips = os.environ.get("HEALTHLEDGER_FORWARDED_ALLOW_IPS", "127.0.0.1")
control_socket_disable = True


def on_starting(server):  # (gunicorn hook signature)
    """Before any worker forks: every worker writes its metrics where any worker's /metrics reads them, and
    knows when the replica started (/readyz's start-up gate, passed once per replica, not per recycled worker)."""
    enable_multiprocess(os.environ.get("HEALTHLEDGER_METRICS_DIR", "/tmp/healthledger-metrics"))
    mark_replica_started()


def child_exit(server, worker):  # (gunicorn hook signature)
    mark_worker_dead(worker.pid)
