"""``lpa-domainbed sweep`` after launching: a non-zero exit status when jobs did not finish,
the one command that resumes them, and Ctrl-C forwarded once to the sweep's process group."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import HAVE_DOMAINBED, NO_DOMAINBED

torch = [pytest.mark.torch, pytest.mark.skipif(not HAVE_DOMAINBED, reason=NO_DOMAINBED)]


SWEEP_RUN_ROWS = [  # (id, launch raises, pre-existing incomplete job, MAKELEVEL, status, fragment)
    ("jobs failed", None, False, None, 1,
     "{n} of {n} jobs did not finish"),
    ("resume command, make form", None, True, "1", 1,
     "make sweep NAME=demo DATA_DIR=d OUTPUT_DIR=o RESTART_INCOMPLETE=1"),
    ("resume command, cli form", None, True, None, 1,
     "lpa-domainbed sweep demo --data_dir d --output_dir o --restart_incomplete"),
    ("ctrl-c", KeyboardInterrupt, False, None, 130, "interrupted: sweep stopped"),
    ("the launch fails (its launcher said why)",
     subprocess.CalledProcessError(1, ["python", "-m", "domainbed.scripts.sweep"]), False, None,
     1, "{n} of {n} jobs did not finish (see each job's err.txt under o). Resume them with:\n"
        "  lpa-domainbed sweep demo --data_dir d --output_dir o --restart_incomplete"),
]


@pytest.mark.parametrize("raises, incomplete, makelevel, status, fragment",
                         [pytest.param(*r[1:], id=r[0], marks=torch) for r in SWEEP_RUN_ROWS])
def test_sweep_exit_status_and_resume(tmp_path, monkeypatch, capsys, raises, incomplete,
                                      makelevel, status, fragment):
    """DomainBed's launch is replaced by a stand-in that runs no job (as if every job failed,
    since DomainBed's sweep exits 0 anyway) or is interrupted; the state is DomainBed's own."""
    from lpa_domainbed.tools import cli, sweeps

    monkeypatch.chdir(tmp_path)
    if makelevel:
        monkeypatch.setenv("MAKELEVEL", makelevel)
    else:
        monkeypatch.delenv("MAKELEVEL", raising=False)
    if incomplete:
        first = sweeps.list_jobs(sweeps.load_sweep("demo"), "d", "o")[0]
        os.makedirs(first.output_dir)
        open(os.path.join(first.output_dir, "out.txt"), "w").close()

    def launch(cmd):
        if raises:
            raise raises

    monkeypatch.setattr(cli, "run_forwarding_signals", launch)
    code = cli.main(["sweep", "demo", "--data_dir", "d", "--output_dir", "o"])
    captured = capsys.readouterr()
    n_jobs = len(sweeps.list_jobs(sweeps.load_sweep("demo"), "d", "o"))
    fragment = fragment.format(n=n_jobs)
    assert code == status and fragment in captured.out + captured.err
    if raises is KeyboardInterrupt:
        assert len(captured.err.strip().splitlines()) == 1  # one line, no traceback


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_signals_reach_the_childs_group_once_and_it_stops_gracefully(tmp_path, signum):
    """SIGINT, SIGTERM (kill, a scheduler) or SIGHUP (a closed terminal) to the CLI process
    reaches the child's process group as a Ctrl-C (DomainBed's sweep would die at once on
    SIGTERM, leaving its jobs running); the child's own handler runs (it would stop its jobs),
    then the CLI reports an interruption."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import signal, sys, time, pathlib
        got = []
        signal.signal(signal.SIGINT, lambda s, f: got.append(s))
        pathlib.Path({str(tmp_path / 'ready')!r}).touch()
        while not got:
            time.sleep(0.05)
        time.sleep(0.3)  # a graceful stop takes a moment; the parent must wait for it
        pathlib.Path({str(tmp_path / 'stopped')!r}).write_text(str(len(got)))
    """))
    parent = (f"import sys\nfrom lpa_domainbed.tools.cli import run_forwarding_signals\n"
              f"try:\n    run_forwarding_signals([sys.executable, {str(child)!r}])\n"
              f"except KeyboardInterrupt:\n    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 130
    assert (tmp_path / "stopped").read_text() == "1"  # got it once, finished its handler


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_sweep_started_in_the_background_still_stops(tmp_path, signum):
    """A script's `lpa-domainbed sweep ... &` (or nohup) starts with SIGINT ignored, and exec
    keeps an ignored signal ignored: the child (DomainBed's sweep, which has no handler of its
    own and relies on Python's KeyboardInterrupt) must still get the forwarded Ctrl-C."""
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent(f"""
        import os, pathlib, time
        pathlib.Path({str(tmp_path / 'ready')!r}).write_text(str(os.getpid()))
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            pathlib.Path({str(tmp_path / 'stopped')!r}).write_text("KeyboardInterrupt")
    """))
    parent = (f"import sys\nfrom lpa_domainbed.tools.cli import run_forwarding_signals\n"
              f"try:\n    run_forwarding_signals([sys.executable, {str(child)!r}])\n"
              f"except KeyboardInterrupt:\n    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 60
        while not (tmp_path / "ready").exists() and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 130
        assert (tmp_path / "stopped").read_text() == "KeyboardInterrupt"
    finally:  # the old code left both running: the parent waiting, the child looping
        pids = [proc.pid]
        if (tmp_path / "ready").exists():
            pids.append(int((tmp_path / "ready").read_text() or 0))
        for pid in filter(None, pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
