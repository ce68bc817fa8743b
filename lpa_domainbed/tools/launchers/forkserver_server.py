"""The process behind ``local_forkserver``: import once, then fork one child per training job.

The launcher (:mod:`.forkserver`) starts this module's :func:`serve` in a fresh interpreter of
the sweep's environment, in a session of its own, with the jobs' environment
(``OMP_NUM_THREADS=1`` ... set *before* torch is imported, as a job started by ``local_parallel``
has it). The server imports everything ``domainbed.scripts.train`` imports (read from its
source, so a newer DomainBed is followed) and with it, through the autoload, this package and
the plugins, checks that CUDA was not touched, and then waits for requests on a pipe.

Per request it forks a child that starts a session of its own, sends stdout and stderr to the
job's log, and returns from :func:`serve` to the interpreter's top level, where
:func:`run_job` runs ``domainbed.scripts.train`` as ``__main__`` with the job's ``sys.argv``.
The child then ends exactly as ``python -m domainbed.scripts.train ...`` would: status of a
``SystemExit``, 1 with the traceback in the log on an exception, atexit handlers run.

**Fork caveat.** A process that has initialized CUDA (``torch.cuda.is_available()`` included,
which calls ``cuInit``) cannot hand a working CUDA to forked children. The server refuses to
serve when anything it imported did so; the children initialize CUDA themselves.

Protocol: JSON lines. Requests ``{"job": i, "argv": [...], "log": path, "env": {...}}`` (``env``:
variables the child sets before the train script runs, such as its ``CUDA_VISIBLE_DEVICES``;
the log exists already and is appended to); events
``{"ready": true}``, ``{"job": i, "pid": pid}``, ``{"job": i, "exit": status}`` (status as
``Popen.returncode``: negative for a signal). End of the request pipe (the launcher has ended,
even killed) or SIGTERM: every child's process group is stopped, and the server exits.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import json
import os
import select
import signal
import sys
import time

__all__ = ["TRAIN_MODULE", "cuda_touched", "preload", "run_job", "serve"]

TRAIN_MODULE = "domainbed.scripts.train"
_GRACE_SECONDS = 5.0


def _train_imports() -> list[str]:
    """The modules the train script imports at its top level (not the script itself:
    ``runpy`` must execute it fresh as ``__main__``)."""
    spec = importlib.util.find_spec(TRAIN_MODULE)
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def preload() -> None:
    """Import what every training job imports; a ``from X import Y`` whose Y is not a module
    is skipped (Y is an attribute, loaded with X)."""
    for name in _train_imports():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
    import lpa_domainbed  # noqa: F401  (the autoload registered it when DomainBed loaded)


def cuda_touched() -> str | None:
    """Why forked children could not use CUDA (the driver was initialized here), else None.

    A loaded driver library (``libcuda``) alone is harmless: some imports load it without
    initializing it. Then a canary child, forked now, must be able to use CUDA; if it cannot,
    the driver was initialized here and no job could."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "torch.cuda is initialized"
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            loaded = "libcuda.so" in maps.read()
    except OSError:
        loaded = False
    if loaded and torch is not None and not _forked_child_can_use_cuda(torch):
        return "the CUDA driver (libcuda) was initialized, e.g. by torch.cuda.is_available()"
    return None


def _forked_child_can_use_cuda(torch) -> bool:
    pid = os.fork()
    if pid == 0:  # the canary: exit status 0 when CUDA works in a forked child
        try:
            torch.zeros(1, device="cuda").add_(1).cpu()
            code = 0
        except BaseException:  # noqa: BLE001 - any failure means no
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


class _Server:
    def __init__(self, requests_fd: int, events_fd: int):
        self.requests = os.fdopen(requests_fd, "rb", buffering=0)
        self.events_fd = events_fd
        self.children: dict[int, int] = {}  # pid -> job index
        self.pid = os.getpid()
        self.buffer = b""

    def send(self, **event) -> None:
        os.write(self.events_fd, (json.dumps(event) + "\n").encode())

    def reap(self) -> None:
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            if pid in self.children:
                self.send(job=self.children.pop(pid), exit=os.waitstatus_to_exitcode(status))

    def read_requests(self, timeout: float) -> list[dict] | None:
        """Complete requests that arrived within ``timeout``; None at end of input."""
        if not select.select([self.requests], [], [], timeout)[0]:
            return []
        data = self.requests.read(65536)
        if not data:
            return None
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def stop_children(self) -> None:
        """SIGTERM each child's group, then SIGKILL what is left after a grace period."""
        if os.getpid() != self.pid:
            return
        for signum in (signal.SIGTERM, signal.SIGKILL):
            for pid in list(self.children):
                try:
                    os.killpg(pid, signum)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + (_GRACE_SECONDS if signum == signal.SIGTERM else 30)
            while self.children and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.02)

    def loop(self) -> dict | None:
        """Serve until the request pipe ends (returns None) or, in a forked child, return
        that child's job."""
        while True:
            self.reap()
            requests = self.read_requests(0.05)
            if requests is None:
                self.stop_children()
                return None
            for job in requests:
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    return job
                self.children[pid] = job["job"]
                self.send(job=job["job"], pid=pid)


def _enter_child(server: _Server, job: dict) -> None:
    """In the forked child: a session of its own, the signals a fresh interpreter has, no
    server pipes, the job's variables (its GPU: CUDA is not initialized yet, see
    :func:`cuda_touched`), stdout and stderr to the job's log (appended to, as local_parallel
    does)."""
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server.requests.close()
    os.close(server.events_fd)
    os.environ.update(job.get("env") or {})
    log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if "numpy" in sys.modules:  # a fresh process draws numpy's global seed from the OS
        sys.modules["numpy"].random.seed()


def serve(requests_fd: int, events_fd: int) -> dict:
    """The server's main function (see the module's docstring). Returns only in a forked
    child, with its job, for :func:`run_job`; the server itself exits when it is done."""
    server = _Server(requests_fd, events_fd)

    def on_sigterm(_signum, _frame):
        server.stop_children()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides; it stops us
    preload()
    reason = cuda_touched()
    if reason:
        print(f"[local_forkserver] cannot fork training jobs: {reason} in the server before "
              f"any job started, and forked children cannot re-initialize CUDA. Find the "
              f"import that touches CUDA (run 'python -c \"import {TRAIN_MODULE}\"' with your "
              f"LPA_DOMAINBED_PLUGINS), or use --command_launcher local_parallel",
              file=sys.stderr, flush=True)
        raise SystemExit(3)
    with contextlib.suppress(OSError):
        if len(os.listdir("/proc/self/task")) > 1:  # a library started threads at import
            print("[local_forkserver] warning: the server runs several threads after its "
                  "imports; a forked job inherits only the forking one (a lock another held "
                  "stays locked). If jobs hang, use local_parallel", file=sys.stderr, flush=True)
    server.send(ready=True)
    job = server.loop()
    if job is None:  # the server is done: skip the slow finalization of torch & co
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    _enter_child(server, job)
    return job


def run_job(job: dict) -> None:
    """Run the train script as ``python -m domainbed.scripts.train ARGS`` would (in a child).
    Exceptions and ``SystemExit`` propagate to the interpreter, which reports and exits as a
    fresh one does."""
    import runpy

    if sys.path and sys.path[0] == "":  # ``python -m`` puts the working directory first
        sys.path[0] = os.getcwd()
    sys.argv = ["-m", *job["argv"]]
    runpy.run_module(TRAIN_MODULE, run_name="__main__", alter_sys=True)
