"""The package's architecture contracts (``[tool.importlinter]`` in pyproject.toml): the core,
which every DomainBed train process imports, never imports the tooling (``lpa_domainbed.tools``),
and the interpreter-start autoload imports only the standard library."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed "
                    "(pip install -e '.[test]')")
def test_import_contracts_are_kept():
    run = subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


@pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed")
def test_a_core_import_of_the_tooling_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package whose core imports the tooling."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "lpa_domainbed", copy / "lpa_domainbed",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    hp = copy / "lpa_domainbed" / "hparams.py"
    hp.write_text(hp.read_text() + "\nfrom lpa_domainbed.tools import runinfo  # noqa\n")
    run = subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=copy, capture_output=True, text=True,
                         env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert run.returncode != 0
    assert "lpa_domainbed.hparams -> lpa_domainbed.tools.runinfo" in run.stdout
