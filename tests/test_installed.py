"""The package as users get it: a non-editable wheel in a fresh virtual environment, run from
an empty directory (sweep files and reference numbers come from the package, outputs land
under the current directory)."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, requires_domainbed
from lpa_domainbed.tools.runinfo import env_with_python
from test_tables import write_algorithm

pytestmark = [requires_domainbed, pytest.mark.slow, pytest.mark.torch]


def run(cmd, cwd, venv):
    env = env_with_python(str(venv / "bin" / "python"),
                          {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel; torch, DomainBed etc. come from this environment through
    plain path entries (their .pth files, the checkout's editable install among them, are not
    processed there)."""
    import domainbed

    tmp = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp / "dist"), str(REPO)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("lpa_domainbed-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                     "['purelib'])"], tmp, venv).stdout.strip())
    (site / "_project_env.pth").write_text(
        f"{sysconfig.get_paths()['purelib']}\n{Path(domainbed.__file__).parents[1]}\n")
    return venv, site


def test_wheel_runs_from_an_empty_directory(installed, tmp_path):
    venv, site = installed
    python = str(venv / "bin" / "python")
    where = run([python, "-c", "import lpa_domainbed, lpa_domainbed.tools.sweeps as s, "
                 "lpa_domainbed.tools.tables as t; print(lpa_domainbed.__file__); print(s.SWEEPS_DIR);"
                 " print(t.published_reference())"], tmp_path, venv)
    assert where.returncode == 0, where.stderr
    package, sweeps_dir, reference = where.stdout.split()
    assert Path(package).is_relative_to(site)  # the wheel, not the checkout
    assert Path(sweeps_dir) == site / "lpa_domainbed" / "tools" / "sweep_files"
    assert Path(reference).is_file() and Path(reference).is_relative_to(site)

    cwd = tmp_path / "empty"
    cwd.mkdir()
    dry = run([str(venv / "bin" / "lpa-domainbed"), "sweep", "demo", "--data_dir", "data",
               "--output_dir", "out", "--dry_run"], cwd, venv)
    assert dry.returncode == 0, dry.stderr
    assert "not launched" in dry.stdout and "--output_dir out" in dry.stdout
    assert list(cwd.iterdir()) == []  # a dry run creates nothing

    write_algorithm(cwd / "sweep", "ColoredMNIST", "ERM", 0.60, 0.02)
    made = run([python, "-m", "lpa_domainbed.tools.tables", "--input_dir", "sweep", "--name", "tiny",
                "--no-plots"], cwd, venv)
    assert made.returncode == 0, made.stderr
    assert (cwd / "results" / "tiny" / "training_domain_validation.md").is_file()
    assert not (site / "results").exists() and not (site / "sweeps_output").exists()
