"""``local_forkserver``: ``local_parallel`` without the interpreter start-up of every job.

A training process spends ~11 s importing torch, DomainBed and this package before its first
step; a small network trains in a few seconds. This launcher starts one server process
(:mod:`.forkserver_server`) that imports all of that once, without touching CUDA, and forks
one child per ``python -m domainbed.scripts.train ...`` command, at most
``LPA_DOMAINBED_JOBS`` at a time. Each child runs the train script as ``__main__`` with the
command's arguments, in a session of its own, logging to the job's ``launcher.log``.

Everything a user sees is ``local_parallel``'s, as both run :func:`.local_parallel.run_locally`
(only the way a job starts differs, :class:`ForkStarter`): the same log location (job
directories from DomainBed's ``Job`` objects, an earlier attempt moved to ``attempt-<n>/``),
environment (``OMP_NUM_THREADS=1`` ...), progress lines, failure report, return value (the
failed commands), and Ctrl-C / SIGTERM / SIGHUP (every job's group stopped, one line, exit
status 130).
A command that is not a train command of this environment's interpreter (another
interpreter, shell syntax) runs as a normal subprocess, as ``local_parallel`` runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time

from lpa_domainbed.tools.launchers import forkserver_server as _forkserver_server
from lpa_domainbed.tools.launchers.forkserver_server import TRAIN_MODULE
from lpa_domainbed.tools.launchers.gpus import gpu_pool
from lpa_domainbed.tools.launchers.local_parallel import Starter, _child_env, run_locally
from lpa_domainbed.tools.launchers.processes import LaunchFailed, signal_group, stop_jobs
from lpa_domainbed.tools.launchers.settings import num_parallel_jobs, settings_or_cleanup
from lpa_domainbed.tools.runinfo import env_with_python

__all__ = ["ForkServer", "ForkStarter", "local_forkserver_launcher", "train_arguments"]

_PREFIX = "[local_forkserver]"
# Outside single quotes, a command DomainBed builds holds only shlex.quote's safe characters.
_SINGLE_QUOTED = re.compile(r"'[^']*'")
_SHELL_SYNTAX = re.compile(r"[^\w@%+=:,./\- ']")


def train_arguments(command: str, env: dict) -> list[str] | None:
    """The train script's arguments when ``command`` is ``<python> -m domainbed.scripts.train
    ARGS`` with no shell syntax and ``<python>`` (looked up on the jobs' PATH) is this
    environment's interpreter (``start_job`` puts its directory first on PATH); else None."""
    if _SHELL_SYNTAX.search(_SINGLE_QUOTED.sub("", command)):
        return None
    tokens = shlex.split(command)
    if len(tokens) < 3 or tokens[1:3] != ["-m", TRAIN_MODULE]:
        return None
    found = tokens[0] if os.sep in tokens[0] else shutil.which(
        tokens[0], path=env_with_python(sys.executable, env)["PATH"])
    if not found or not os.path.basename(found).startswith("python") or \
            os.path.dirname(os.path.abspath(found)) != os.path.dirname(sys.executable):
        return None
    return tokens[3:]


class ForkServer:
    """The launcher's end of the server: start it, submit jobs, collect their exits."""

    def __init__(self, env: dict):
        requests_read, self._requests = os.pipe()
        self._events, events_write = os.pipe()
        # Loaded from its file, not as lpa_domainbed.tools.launchers.forkserver_server: the
        # package would bring the launchers (tooling) into every forked train process.
        path = _forkserver_server.__file__
        code = (f"import importlib.util as u, sys\n"
                f"s = u.spec_from_file_location('_lpa_forkserver', {path!r})\n"
                f"m = sys.modules[s.name] = u.module_from_spec(s)\n"
                f"s.loader.exec_module(m)\n"
                f"m.run_job(m.serve({requests_read}, {events_write}))\n")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], env=env_with_python(sys.executable, env),
            stdin=subprocess.DEVNULL, start_new_session=True,
            pass_fds=(requests_read, events_write))
        os.close(requests_read)
        os.close(events_write)
        self.exits: dict[int, int] = {}
        self.pids: dict[int, int] = {}
        self._buffer = b""
        self.ended = False

    def pump(self, timeout: float = 0.0) -> None:
        """Read the events that arrive within ``timeout`` seconds."""
        if self.ended or not select.select([self._events], [], [], timeout)[0]:
            return
        data = os.read(self._events, 65536)
        if not data:
            self.ended = True
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for event in map(json.loads, filter(None, lines)):
            if "pid" in event:
                self.pids[event["job"]] = event["pid"]
            elif "exit" in event:
                self.exits[event["job"]] = event["exit"]

    def submit(self, index: int, argv: list[str], log: str, env: dict) -> "ForkedJob":
        """Fork the job (``env`` added to its environment); waits for its pid (the first waits
        for the server's imports)."""
        request = json.dumps({"job": index, "argv": argv, "log": log, "env": env}) + "\n"
        try:
            os.write(self._requests, request.encode())
        except BrokenPipeError:
            self.ended = True
        while index not in self.pids and not self.ended:
            self.pump(1.0)
        if self.ended:
            code = self.process.wait()
            how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            raise LaunchFailed(
                f"error: {_PREFIX} the server that forks the jobs ended ({how}) before job "
                f"{index} started (a message of its own, if any, is above): the jobs not started "
                f"are left unlaunched, the stopped ones incomplete. Resume with the sweep's "
                f"resume command (lpa-domainbed sweep ... --restart_incomplete, see 'Resume' in "
                f"docs/launchers.md); --command_launcher local_parallel runs without the server")
        return ForkedJob(self, index, self.pids[index])

    def close(self, stop: bool = False) -> None:
        """End the server (it stops any child still running; ``stop``: now, even during its
        imports) and wait for it."""
        with contextlib.suppress(OSError):
            os.close(self._requests)
        if stop:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_jobs([self.process], grace=0)
        os.close(self._events)


class ForkedJob:
    """A forked job as far as the launcher and :func:`.processes.stop_jobs` use a Popen."""

    def __init__(self, server: ForkServer, index: int, pid: int):
        self.server, self.index, self.pid = server, index, pid

    @property
    def returncode(self) -> int | None:
        if self.index not in self.server.exits and self.server.ended:
            # The server died (the OOM killer, a kill): its jobs cannot report an exit status.
            # Stop the job's group, lest it run on unwatched, and count it as killed.
            signal_group(self.pid, signal.SIGKILL)
            self.server.exits[self.index] = -signal.SIGKILL
        return self.server.exits.get(self.index)

    def poll(self) -> int | None:
        self.server.pump()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"job {self.index}", timeout)
            self.server.pump(min(left, 1.0))
        return self.returncode


class ForkStarter(Starter):
    """Train commands of this environment are forked from a :class:`ForkServer`, started at
    the first of them; other commands run as ``local_parallel`` runs them."""

    prefix = _PREFIX

    def __init__(self, env: dict, plans: list[list[str] | None]):
        super().__init__(env)
        self.plans, self.server = plans, None

    def start(self, index: int, command: str, log: str, extra_env: dict):
        if self.plans[index] is None:
            return super().start(index, command, log, extra_env)
        self.server = self.server or ForkServer(self.env)
        return self.server.submit(index, self.plans[index], log, extra_env), None

    def starting(self, index: int):
        """A forked job needs no deferral (the server stops its children when it is closed),
        and the first waits for the server's imports, during which a Ctrl-C must act."""
        if self.plans[index] is None:
            return super().starting(index)
        return contextlib.nullcontext()

    def close(self, stop: bool = False) -> None:
        if self.server:
            self.server.close(stop=stop)
            self.server = None


def local_forkserver_launcher(commands: list[str], max_jobs: int | None = None) -> list[str]:
    """Run ``commands`` with at most ``max_jobs`` (default: ``LPA_DOMAINBED_JOBS``) at once,
    train commands forked from one server. Returns the commands that failed (non-zero exit);
    a failed job does not stop the others. Ctrl-C, SIGTERM or SIGHUP stops the running jobs
    and raises SystemExit(130)."""
    commands = list(commands)
    jobs_setting = settings_or_cleanup(commands, "local_forkserver", num_parallel_jobs)
    env = _child_env()
    plans = [train_arguments(command, env) for command in commands]
    others = sum(argv is None for argv in plans)
    if others:
        print(f"{_PREFIX} {others} of {len(commands)} commands are not '<python> -m "
              f"{TRAIN_MODULE} ...' of this environment: they run as subprocesses",
              file=sys.stderr, flush=True)
    return run_locally(commands, max_jobs or jobs_setting, ForkStarter(env, plans), gpu_pool())
