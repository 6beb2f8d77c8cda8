"""A fork server for the ``cli`` fixture: each call is still its own ``latentops`` process.

Importing the CLI (typer, SQLAlchemy's ORM, the policy and audit modules) costs most of a short
command's wall time, and the suite runs a few hundred commands. One server per test process
imports ``latentops.platform.cli.main`` once and forks for every call. The forked process takes
the call's environment, working directory, stdin, stdout and stderr, runs the same ``run()`` that
``python -m latentops.platform.cli.main`` runs, and exits with the code that process would: after
the interpreter's shutdown steps a command can observe (threads joined, exit handlers, streams
flushed) but without its module teardown, or killed by a signal.

What a fork cannot reproduce is start-up: modules imported before the call see the server's
environment, not the call's. ``Cli`` therefore forks only when the call's environment differs from
the server's in ``LATENTOPS_*`` and ``MLFLOW_*`` variables alone, which the product reads when a
command runs, never at import (and in pytest's ``PYTEST_CURRENT_TEST``, which it never reads, and
in the variables libraries set on their own import, ``SET_BY_IMPORTS``); any other difference runs
a fresh interpreter. Tests of start-up itself (import cost, unmigrated databases, ``--help``) keep
starting their own processes.

A command that runs a model imports torch, diffusers, transformers and peft, five seconds of CPU
that each such call would pay again. Each forked command reports whether it imported torch; once a
command (``generate``, ``finetune run``: the command, whatever its arguments) has, its later calls
go to a second server, started then, that imported the model libraries before the CLI, in the order
such a command imports them (torch before regopy, ``governance.native``); the commands in
``MODEL_COMMANDS`` go there from their first call. Every other command stays
on the plain server: forking the larger process costs a tenth of a second more, and a command marked
``runs_no_model`` must run without torch.

Protocol, one Unix-socket connection per call: the client sends one JSON line (``args``, ``env``,
``cwd`` and the paths of the files standing in for the three standard streams); a supervisor
forked for the connection forks the command, answers its pid, waits for it, and answers its exit
code as ``subprocess`` reports it (negative: the signal that ended it).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

# Read when a command runs, never at import; PYTEST_CURRENT_TEST (pytest's own) is read by nothing.
CALL_TIME_PREFIXES = ("LATENTOPS_", "MLFLOW_", "PYTEST_CURRENT_TEST")
# Set by libraries as they are imported, to what each sets in any process that imports it: a test
# process that ran diffusers (torch's inductor), open_clip, mlflow or scikit-learn (and joblib,
# threadpoolctl) in-process has them, the server's start-up environment may not. Counted as
# start-up differences, they sent every later call of that test process to a fresh interpreter
# (tests/test_cli_forkserver.py). The KMP_ ones are read only by Intel's OpenMP runtime, which no
# package here ships (torch and scikit-learn load GNU libgomp).
SET_BY_IMPORTS = frozenset({"TORCHINDUCTOR_CACHE_DIR", "TOKENIZERS_PARALLELISM", "_MLFLOW_TELEMETRY_SESSION_ID",
                            "KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK"})


def _start_up_env(env: dict[str, str]) -> dict[str, str]:
    """What of ``env`` a process can read while it starts: all but the call-time variables and
    those the libraries set on import."""
    return {k: v for k, v in env.items() if not k.startswith(CALL_TIME_PREFIXES) and k not in SET_BY_IMPORTS}


# What a command that runs a model imports, in that order: torch, regopy after it, the model libraries.
MODEL_LIBRARIES = ("diffusers", "transformers", "peft", "accelerate")
# diffusers and transformers import their classes on first use.
MODEL_CLASSES = {"diffusers": ("DiffusionPipeline", "StableDiffusionPipeline", "UNet2DConditionModel", "AutoencoderKL",
                               "DDPMScheduler"),
                 "transformers": ("CLIPTextModel", "CLIPTokenizer")}


def _import_models() -> None:
    import importlib

    from latentops.governance import native

    native.load_regopy()  # imports torch first
    for name in MODEL_LIBRARIES:
        module = importlib.import_module(name)
        for attribute in MODEL_CLASSES.get(name, ()):
            getattr(module, attribute)


# Commands known to run a model, so that even their first call forks from the model server.
MODEL_COMMANDS = frozenset({("generate",), ("finetune", "run"), ("datasets", "generate"), ("models", "create-tiny"),
                            ("models", "import"), ("screen",)})


@functools.cache
def _command_tree():  # type: ignore[no-untyped-def]
    """The CLI's click command tree, built once per test process (about 20 ms a build)."""
    import typer

    from latentops.platform.cli.main import app

    return typer.main.get_command(app)


def command_of(args: list[str]) -> tuple[str, ...]:
    """The names of the command (and its groups) that ``args`` run, such as ``("finetune", "run")``."""
    command, names = _command_tree(), []
    for token in args:  # options and their values match no command name
        sub = getattr(command, "commands", {}).get(token)
        if sub is not None:
            command = sub
            names.append(token)
    return tuple(names)


def _serve(path: str, models: bool) -> None:
    if models:
        _import_models()
    from latentops.platform.cli import main  # the import every forked call saves

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    os.write(1, b"ready\n")
    while True:
        ready, _, _ = select.select([listener, 0], [], [])
        if 0 in ready and not os.read(0, 1024):  # the test process is gone
            return
        if listener in ready:
            connection, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _supervise(connection, main)  # never returns: supervisor and command both end in os._exit
            connection.close()


def _supervise(connection: socket.socket, main) -> NoReturn:  # type: ignore[no-untyped-def]
    with connection.makefile("rb") as reader:
        request = json.loads(reader.readline())
    pid = os.fork()
    if pid == 0:
        connection.close()
        _become_command(request, main)
    try:
        connection.sendall(f"{pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    except OSError:  # the test gave up on the call (timeout) and closed the connection
        pass
    os._exit(0)


def _become_command(request: dict, main) -> NoReturn:  # type: ignore[no-untyped-def, type-arg]
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, (name, flags) in enumerate([("stdin", os.O_RDONLY), ("stdout", os.O_WRONLY | os.O_TRUNC | os.O_CREAT),
                                        ("stderr", os.O_WRONLY | os.O_TRUNC | os.O_CREAT)]):
        opened = os.open(request[name], flags, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [main.__file__, *request["args"]]
    sys.modules["__main__"] = main  # so click names the program as for ``python -m``; so does multiprocessing
    # as ``python -m`` run from that directory has it: the directory first, not this server's folder
    sys.path[:] = [request["cwd"], *(entry for entry in sys.path if entry not in ("", str(Path(__file__).parent)))]
    code = 0
    try:
        main.run(request["args"])
    except SystemExit as leaving:
        code = _exit_code(leaving.code)
    except BaseException:  # noqa: BLE001 - an uncaught exception: traceback and exit 1, as the interpreter does
        sys.excepthook(*sys.exc_info())
        code = 1
    # The interpreter's shutdown less its module teardown, which is most of a short command's cost
    # after the fork and which no command observes: threads joined, exit handlers, the streams.
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    Path(request["report"]).write_text("torch" if "torch" in sys.modules else "")
    os._exit(code)


def _exit_code(code: object) -> int:
    """What the interpreter exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _text(data: bytes) -> str:
    """Decoded as ``subprocess.run(..., text=True)`` decodes: the locale's encoding, universal newlines."""
    import locale

    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


class ForkServer:
    """A server for this test process (``start`` it before any test changes the environment)."""

    def __init__(self, repo: Path, models: bool = False) -> None:
        self.repo = repo
        self.models = models
        self.process: subprocess.Popen[bytes] | None = None
        self.folder = ""
        self.env: dict[str, str] = {}

    def start(self, env: dict[str, str]) -> None:
        """Start with ``env`` less the call-time variables, which each call brings."""
        self.folder = tempfile.mkdtemp(prefix="latentops-cli-")
        self.env = _start_up_env(env)
        self.process = subprocess.Popen(
            [sys.executable, "-c", (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                                    f"import cli_forkserver; cli_forkserver._serve({self.socket!r}, {self.models!r})")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env, cwd=self.repo,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the CLI fork server did not start (exit {self.process.wait()})")

    @property
    def socket(self) -> str:
        return os.path.join(self.folder, "socket")

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a call with ``env`` starts the same as a fresh ``python -m`` would."""
        running = self.process is not None and self.process.poll() is None
        return running and _start_up_env(env) == self.env

    def run(self, args: list[str], env: dict[str, str], input: str | None, timeout: float) -> tuple[int, str, str, bool]:
        """Exit code, stdout, stderr, and whether the command imported torch."""
        with tempfile.TemporaryDirectory(dir=self.folder) as scratch:
            streams = {name: os.path.join(scratch, name) for name in ("stdin", "stdout", "stderr", "report")}
            Path(streams["stdin"]).write_text(input or "")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(self.socket)
                request = {"args": args, "env": env, "cwd": str(self.repo), **streams}
                connection.sendall(json.dumps(request).encode() + b"\n")
                connection.settimeout(timeout)
                with connection.makefile("rb") as reader:
                    pid = int(reader.readline())
                    try:
                        code = int(reader.readline())
                    except TimeoutError:
                        os.kill(pid, signal.SIGKILL)
                        raise subprocess.TimeoutExpired(["latentops", *args], timeout) from None
            report = Path(streams["report"])
            torch = report.exists() and report.read_text() == "torch"
            return code, _text(Path(streams["stdout"]).read_bytes()), _text(Path(streams["stderr"]).read_bytes()), torch

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class ForkServers:
    """This test process's two servers: one with the CLI imported, and one with the model libraries
    imported too, started when a command first imported torch."""

    def __init__(self, repo: Path) -> None:
        self.plain, self.models = ForkServer(repo), ForkServer(repo, models=True)
        self.env: dict[str, str] = {}
        self.model_commands = set(MODEL_COMMANDS)  # and the commands seen importing torch

    def start(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.plain.start(env)

    def run(self, args: list[str], env: dict[str, str], input: str | None, timeout: float) -> tuple[int, str, str] | None:
        """Run ``args`` forked, as a fresh process with ``env`` would run; None when no server can."""
        if not self.plain.serves(env):
            return None
        command = command_of(args)
        if command in self.model_commands:
            if self.models.process is None:
                self.models.start(self.env)
            if not self.models.serves(env):  # it stopped: a fresh interpreter, as without it
                return None
            code, out, err, _ = self.models.run(args, env, input, timeout)
            return code, out, err
        code, out, err, torch = self.plain.run(args, env, input, timeout)
        if torch:
            self.model_commands.add(command)
        return code, out, err

    def stop(self) -> None:
        self.plain.stop()
        self.models.stop()
