"""A throw-away single-node Slurm cluster for the tests: munged, slurmctld and slurmd started
from a generated ``slurm.conf`` with free ports and every file under one directory, and stopped
by their process ids.

``make test-slurm`` passes that directory (``LPA_TEST_SLURM_DIR``) and, whatever happens, kills
the pids written there (``*.pid``) when it ends; the tests' session fixture stops them too.
Slurm and munge are installed with ``apt-get`` where missing and possible (root, Debian).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from launcher_helpers import is_alive

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")
CLIENTS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")


class Unavailable(RuntimeError):
    """Slurm cannot be installed or started here; the message says why."""


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def _missing() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _sbin(name) is None]


def install() -> str:
    """Install Slurm and munge where missing (``apt-get``, as root); return Slurm's version."""
    if _missing():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise Unavailable(f"Slurm is not installed ({', '.join(_missing())} missing) and "
                              f"cannot be here (needs root and apt-get): "
                              f"apt-get install {' '.join(PACKAGES)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install_cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
        if subprocess.run(install_cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            run = subprocess.run(install_cmd, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: "
                                  f"{run.stderr.strip()[-300:]}")
    version = subprocess.run([_sbin("sbatch"), "--version"], capture_output=True, text=True)
    return version.stdout.strip()


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _write_config(root: Path, cpus: int) -> Path:
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "slurm.conf"
    config.write_text(f"""\
ClusterName=lpatest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerParameters=sched_interval=2,bf_interval=2
MinJobAge=600
KillWait=2
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
    return config


def _munge(root: Path) -> None:
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    subprocess.run([_sbin("munged"), "--force", f"--key-file={key}",
                    f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid",
                    f"--log-file={root}/log/munged.log", f"--seed-file={root}/munged.seed"],
                   check=True, capture_output=True, timeout=30)


def env(root: Path) -> dict:
    """The environment in which Slurm's commands reach this cluster."""
    return dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))


def _wait_idle(root: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        run = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env(root), capture_output=True,
                             text=True)
        state = run.stdout.strip() or run.stderr.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    logs = "".join((root / "log" / f).read_text()[-600:] for f in ("slurmctld.log", "slurmd.log")
                   if (root / "log" / f).exists())
    raise Unavailable(f"the test cluster's node is not idle after {timeout:.0f}s "
                      f"(sinfo: {state!r}); logs:\n{logs}")


def start(root: Path, cpus: int = 8, timeout: float = 60.0) -> dict:
    """Start the cluster under ``root``; return the environment that reaches it."""
    root.mkdir(parents=True, exist_ok=True)
    _write_config(root, cpus)
    try:
        _munge(root)
        for daemon in ("slurmctld", "slurmd"):
            args = [_sbin(daemon), "-f", str(root / "slurm.conf")]
            if daemon == "slurmctld":
                args.append("-c")  # a clean state: no job of an earlier cluster
            else:
                args += ["-N", socket.gethostname().split(".")[0]]
            subprocess.run(args, env=env(root), check=True, capture_output=True, timeout=30)
        _wait_idle(root, timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        stop(root)
        detail = getattr(error, "stderr", b"") or b""
        raise Unavailable(f"the test cluster did not start: {error} "
                          f"{detail.decode(errors='replace')[-300:]}") from None
    except Unavailable:
        stop(root)
        raise
    return env(root)


def pids(root: Path) -> list[int]:
    out = []
    for daemon in DAEMONS:
        path = root / f"{daemon}.pid"
        try:
            out.append(int(path.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def stop(root: Path, timeout: float = 15.0) -> list[int]:
    """SIGTERM the cluster's daemons by pid (SIGKILL after ``timeout``); return those still
    alive afterwards (none, normally)."""
    own = [pid for pid in pids(root) if is_alive(pid)]
    for pid in own:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in own) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in own:
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return [pid for pid in own if is_alive(pid)]
