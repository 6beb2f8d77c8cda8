"""Jobs: submit, dispatch, execute under a lease, record the outcome.

The job row is the truth. One verb per step of a job's life, each in the caller's transaction:
``submit`` writes the job and its audit entry, ``cancel`` and ``retry`` change it; a new or
retried job is handed to the broker only once that transaction commits. On a worker ``execute``
claims the job under a lease, runs its kind's handler and records the outcome; ``sweep`` sends
again what a lost worker or a lost message left behind.

* ``kinds``: the job kinds (handler, queue, parameter check), named by import string;
* ``submit``: the broker check, the jobs policy's admission, the row, the broker hand-off;
* ``control``: reading a job or a list, its events, cancel, retry, queue positions;
* ``views``: what a caller may see (team isolation) and a job's JSON, for the routes and the portal;
* ``executor``: the lease, heartbeat and outcome on the worker, and the sweeper.
"""

from latentops.platform.services.jobs.control import (
    as_dict,
    cancel,
    events,
    get,
    list_jobs,
    queue_position,
    queue_positions,
    retry,
)
from latentops.platform.services.jobs.executor import JobCancelled, JobContext, LeaseLost, execute, sweep
from latentops.platform.services.jobs.kinds import JOB_KINDS, JobKind, load_function
from latentops.platform.services.jobs.submit import (
    WAITING_STATES,
    admit,
    broker_priority,
    dispatch,
    ping_broker,
    submit,
    usage,
)

__all__ = [
    "JOB_KINDS", "WAITING_STATES", "JobCancelled", "JobContext", "JobKind", "LeaseLost", "admit", "as_dict",
    "broker_priority", "cancel", "dispatch", "events", "execute", "get", "list_jobs", "load_function", "ping_broker",
    "queue_position", "queue_positions", "retry", "submit", "sweep", "usage",
]
