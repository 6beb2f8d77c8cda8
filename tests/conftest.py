"""Shared fixtures: real databases (SQLite always, PostgreSQL when configured), real Redis,
an isolated ``LATENTOPS_HOME`` per test, and the real CLI run as a subprocess.

PostgreSQL and Redis come from ``LATENTOPS_TEST_POSTGRES_URL`` and ``LATENTOPS_TEST_REDIS_URL``.
Without them those tests skip with a reason on a laptop; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_forkserver import ForkServers

# Under pytest-xdist each worker runs torch, and so do the worker, server and CLI processes the tests
# start. With torch's default of one thread per core in every one of them, the cores are oversubscribed
# and OpenMP threads spin waiting for each other: the torch-heavy modules ran in 223 s with the
# default against 115 s with one thread per xdist worker on two cores. Subprocesses inherit the setting.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS)))

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_URL = os.environ.get("LATENTOPS_TEST_POSTGRES_URL", "")
REDIS_URL = os.environ.get("LATENTOPS_TEST_REDIS_URL", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules holding a ``slow`` test run first, each kept whole (its module fixtures are made once).

    ``make test`` spreads the suite over workers that steal pending tests from each other; what no
    worker can share is a long test that starts last. Started first, the long tests overlap with
    everything else, and the suite ends on short ones.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: file order within each group
    one_backend(config, items)


def one_backend(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``one_backend`` run on one database backend instead of both.

    They are end-to-end flows (CLI, API, workers) whose storage is the shared SQLAlchemy code,
    and each took 10-80 s per backend. They run on PostgreSQL where it is configured (CI: the
    production backend), on SQLite otherwise; the embedded default's end-to-end path on SQLite is
    run by the demo, stack and README-tour tests, and every storage-level test still runs on both.
    """
    backend = "postgres" if POSTGRES_URL or IN_CI else "sqlite"
    keep, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        other = params.get("database_url") in {"sqlite", "postgres"} and params["database_url"] != backend
        (dropped if other and item.get_closest_marker("one_backend") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def require_service(value: str, variable: str) -> str:
    """Skip (laptop) or fail (CI) when a service's URL is not configured."""
    if value:
        return value
    message = f"{variable} is not set; this test needs that service"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service fails the run)")
    pytest.skip(message)


# --- databases --------------------------------------------------------------------------------


def _pg_admin(url: str):  # type: ignore[no-untyped-def]
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, password=parsed.password,
        dbname=parsed.database or "postgres", autocommit=True,
    )


def _pg_url_for(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql+psycopg", database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from latentops.platform import migrate

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    from latentops.platform.database import dispose_all

    dispose_all()
    return path


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    url = require_service(POSTGRES_URL, "LATENTOPS_TEST_POSTGRES_URL")
    from latentops.platform import migrate
    from latentops.platform.database import dispose_all

    name = f"latentops_tmpl_{os.getpid()}"
    with _pg_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    migrate.upgrade(_pg_url_for(url, name))
    dispose_all()
    yield name
    with _pg_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty database of ``backend`` for one test."""
    from latentops.platform.database import dispose_all

    if backend == "sqlite":
        template = request.getfixturevalue("_sqlite_template")
        path = tmp_path / "latentops.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        dispose_all()
        return
    template = request.getfixturevalue("_pg_template")
    name = f"latentops_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin(POSTGRES_URL) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _pg_url_for(POSTGRES_URL, name)
    dispose_all()
    with _pg_admin(POSTGRES_URL) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh migrated database, once on SQLite and once on PostgreSQL."""
    yield from fresh_database(request.param, tmp_path, request)


@pytest.fixture
def sqlite_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("sqlite", tmp_path, request)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database("postgres", tmp_path, request)


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty (unmigrated) database; parametrised over both backends by the test."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = require_service(POSTGRES_URL, "LATENTOPS_TEST_POSTGRES_URL")
    name = f"latentops_e_{uuid.uuid4().hex[:12]}"
    with _pg_admin(url) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _pg_url_for(url, name)
    from latentops.platform.database import dispose_all

    dispose_all()
    with _pg_admin(url) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- redis ------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> str:
    """A real Redis, its database flushed for this test.

    Under pytest-xdist each worker process gets its own database number (the configured one plus
    the worker's index), so parallel tests never flush each other's queues.
    """
    url = require_service(REDIS_URL, "LATENTOPS_TEST_REDIS_URL")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw"):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        base = int(parts.path.strip("/") or 0)
        url = urlunsplit(parts._replace(path=f"/{(base + int(worker[2:])) % 16}"))
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


# --- settings and the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1 model folder to catalogue, made once per module (a module may define its own)."""
    from generation_helpers import tiny_source

    return tiny_source(tmp_path_factory.mktemp("models"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def settings_env(home: Path, database_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Settings for one test: its own home and database, read through the real Settings."""
    from latentops.core.settings import get_settings

    for key in list(os.environ):
        if key.startswith("LATENTOPS_") and not key.startswith("LATENTOPS_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LATENTOPS_HOME", str(home))
    monkeypatch.setenv("LATENTOPS_DATABASE_URL", database_url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    get_settings.cache_clear()
    settings = get_settings()
    yield settings
    get_settings.cache_clear()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


class Cli:
    """Runs ``latentops`` as its own process with the test's environment.

    Calls go through this test process's fork server (``cli_forkserver``), which saves each call
    the CLI's imports; a call whose environment would change start-up runs a fresh interpreter.
    """

    def __init__(self, env: dict[str, str], forks: ForkServers | None = None) -> None:
        self.env = env
        self.forks = forks

    def __call__(self, *args: str, input: str | None = None, timeout: float = 300, env: dict[str, str] | None = None) -> CliResult:
        merged = {**self.env, **(env or {})}
        forked = self.forks.run(list(args), merged, input, timeout) if self.forks is not None else None
        if forked is not None:
            return CliResult(*forked)
        done = subprocess.run(
            [sys.executable, "-m", "latentops.platform.cli.main", *args], check=False, input=input, capture_output=True,
            text=True, timeout=timeout, env=merged, cwd=REPO,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)


def _cli_env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


@pytest.fixture(scope="session")
def _cli_forks() -> Iterator[ForkServers | None]:
    """This test process's CLI fork servers, started before any test changes the environment."""
    if not hasattr(os, "fork"):
        yield None
        return
    forks = ForkServers(REPO)
    forks.start(_cli_env())
    yield forks
    forks.stop()


@pytest.fixture
def cli(settings_env, _cli_forks) -> Cli:  # type: ignore[no-untyped-def]
    return Cli(_cli_env(), _cli_forks)


# --- real worker processes --------------------------------------------------------------------


class WorkerProcess:
    """A real ``latentops worker`` subprocess against the test's database and Redis."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "gpu,cpu") -> None:
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "latentops.platform.cli.main", "worker", "--queues", queues],
            env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_path.read_text()}")

    def signal(self, sig: int = 15) -> None:
        """Send ``sig`` to the worker's whole process group, if it still runs."""
        import os

        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def wait_stopped(self, timeout: float = 30.0) -> None:
        """Wait for the worker to exit; after ``timeout`` its group is killed."""
        import os
        import signal as _signal

        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, _signal.SIGKILL)
            self.process.wait()

    def stop(self, sig: int = 15) -> None:
        self.signal(sig)
        self.wait_stopped()


@pytest.fixture
def queue_settings(settings_env, redis_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Settings with the test's database and the real Redis as broker."""
    from latentops.core.settings import get_settings
    from latentops.platform.queue.app import celery_app

    monkeypatch.setenv("LATENTOPS_BROKER_URL", redis_url)
    get_settings.cache_clear()
    celery_app.cache_clear()
    yield get_settings()
    celery_app.cache_clear()


@pytest.fixture
def broker_down(settings_env, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Settings with the test's database and a broker nothing answers (port 1)."""
    from latentops.core.settings import get_settings
    from latentops.platform.queue.app import celery_app

    monkeypatch.setenv("LATENTOPS_BROKER_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    celery_app.cache_clear()
    yield get_settings()
    celery_app.cache_clear()


@pytest.fixture
def start_worker(queue_settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start real worker processes; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []
    base_env = {**os.environ}

    def _start(queues: str = "gpu,cpu", env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess({**base_env, **(env or {})}, tmp_path / f"worker-{len(started)}.log", queues)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield _start
    for worker in started:  # all at once: each takes a while to shut down
        worker.signal()
    for worker in started:
        worker.wait_stopped()
    for worker in started:  # shown with the test's report only when it fails
        print(f"--- {worker.log_path.name} (last 4,000 characters) ---\n{worker.log_path.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def fresh_policy():  # type: ignore[no-untyped-def]
    """A policy service of its own, so data edits of earlier tests' databases do not leak in."""
    from latentops.governance import policy

    policy.use_service(None)
    yield
    policy.use_service(None)


@pytest.fixture
def people(settings_env) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """One user per role (two submitters, in different teams), each with a personal API token."""
    from api_helpers import make_user

    url = settings_env.database_url
    return {
        "alice": make_user(url, "alice@example.com", "submitter", "design"),
        "bob": make_user(url, "bob@example.com", "submitter", "marketing"),
        "carol": make_user(url, "carol@example.com", "compliance_officer", "compliance"),
        "dave": make_user(url, "dave@example.com", "admin", "ops"),
    }


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A copy of the shipped policy folder a test may edit."""
    from latentops.governance.policy_bundle import DEFAULT_POLICY_DIR

    target = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    return target


# The portal browser tests' fixtures, shared by every test module that drives the portal.
from portal_helpers import browser, portal, portal_with_worker  # noqa: F401
