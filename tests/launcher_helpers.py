"""Helpers of the launcher tests: tiny jobs, process checks, a fake Slurm."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

_real_sleep = time.sleep



def writer_command(path: Path, output_dir: Path | None = None) -> str:
    """A tiny job: a Python process that writes ``path`` (and names a DomainBed-like output dir)."""
    code = f"open({str(path)!r}, 'w').write('ok')"
    command = f'{sys.executable} -c "{code}"'
    return f"{command} --output_dir {output_dir}" if output_dir else command


def sleeper_command(pid_dir: Path, index: int) -> str:
    """A job that records its shell's pid and a background child's pid, then waits 120 s (far
    longer than :func:`assert_all_gone` waits, so an orphan is always caught)."""
    return (f"echo $$ > {pid_dir}/shell{index}.pid; sleep 120 & echo $! > {pid_dir}/child{index}.pid;"
            f" wait")


def recorded_pids(pid_dir: Path, expected: int) -> list[int]:
    pids = []
    for path in sorted(pid_dir.glob("*.pid")):
        text = path.read_text()
        if text.endswith("\n"):
            pids.append(int(text))
    return pids if len(pids) == expected else []


def wait_for_pids(pid_dir: Path, expected: int, timeout: float = 20.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = recorded_pids(pid_dir, expected)
        if pids:
            return pids
        _real_sleep(0.05)
    raise AssertionError(f"the jobs did not record {expected} pids in {timeout}s")


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped by init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def assert_all_gone(pids: list[int], timeout: float = 20.0) -> None:
    # Generous: on a loaded 2-core CI machine the stop signals take a while to be delivered.
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        _real_sleep(0.05)
    assert not [pid for pid in pids if is_alive(pid)], "processes outlived the launcher"


def interrupt_once_pids_exist(pid_dir: Path, expected: int, found: list[int],
                              signum: int | None = None):
    """A replacement for the launcher's sleep: Ctrl-C (or the signal ``signum`` to this process,
    as ``kill`` or a closed terminal sends it) once every job has started, then sleep (the
    clean-up's own waits may sleep too)."""

    def fake_sleep(seconds: float) -> None:
        if found:
            _real_sleep(seconds)
            return
        found.extend(wait_for_pids(pid_dir, expected))
        if signum is not None:
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    return fake_sleep


FAKE_SBATCH = """\
import os, re, subprocess, sys
script = sys.argv[-1]
text = open(script).read()
counter = os.path.join(os.environ["FAKE_SLURM_DIR"], "next_id")
job_id = int(open(counter).read()) if os.path.exists(counter) else 1000
if (job_id - 1000) // 100 >= int(os.environ.get("FAKE_SLURM_ACCEPT", "1000")):
    sys.exit("sbatch: error: QOSMaxSubmitJobPerUserLimit")
open(counter, "w").write(str(job_id + 100))
kept = os.path.join(os.environ["FAKE_SLURM_DIR"], f"{job_id}.sbatch")  # submitit renames script
os.link(script, kept)
array = re.search(r"#SBATCH --array=(\\d+)-(\\d+)", text)
indices = range(int(array.group(1)), int(array.group(2)) + 1) if array else [None]
for index in indices:
    env = dict(os.environ, SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0",
               SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_ID=str(job_id))
    if index is not None:
        env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(index),
                   SLURM_JOB_ID=str(job_id + 1 + index))
    # Start the task only once submitit has written its pickle (after sbatch returns): a
    # real scheduler never starts a job that fast, and a busy machine can take > 60 s.
    folder = os.path.dirname(re.search(r"#SBATCH --output=(\\S+)", text).group(1))
    pickle = os.path.join(folder, f"{job_id}_{index}_submitted.pkl" if index is not None
                          else f"{job_id}_submitted.pkl")
    wait = f"while [ ! -e '{pickle}' ]; do sleep 0.2; done; exec bash '{kept}'"
    subprocess.Popen(["bash", "-c", wait], env=env, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"Submitted batch job {job_id}")
"""

FAKE_SRUN = """\
import os, subprocess, sys
args = sys.argv[1:]
files = {}
while args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0)
job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ["SLURM_JOB_ID"]
def expand(path):
    return (path.replace("%A", job).replace("%a", os.environ.get("SLURM_ARRAY_TASK_ID", ""))
            .replace("%j", os.environ["SLURM_JOB_ID"]).replace("%t", "0"))
with open(expand(files["--output"]), "a") as out, open(expand(files["--error"]), "a") as err:
    sys.exit(subprocess.call(args, stdout=out, stderr=err))
"""


def fake_slurm(bin_dir: Path) -> None:
    """``sbatch`` runs every array task at once in the background, ``srun`` runs its command
    with the logs redirected, ``sacct`` knows nothing (submitit then relies on result files)."""
    bin_dir.mkdir()
    scripts = {"sbatch": FAKE_SBATCH, "srun": FAKE_SRUN, "sacct": ""}
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)




# PATH for a sweep started without activating its environment: no directory of ours on it.
BARE_PATH = os.pathsep.join(["/usr/bin", "/bin"])


def python_and_env_probe(out: Path) -> str:
    """A job that writes which ``python`` it found and ``$LPA_DOMAINBED_PLUGINS`` to ``out``."""
    code = "import os, sys; print(sys.executable); print(os.environ.get('LPA_DOMAINBED_PLUGINS'))"
    return f'python -c "{code}" > {out}'
