"""Tooling only where it is used: a DomainBed train process imports the package's algorithms
and datasets, never its tooling (``lpa_domainbed.tools``: launchers, tables, ...); the command
launchers load when ``domainbed.command_launchers`` is imported, where a sweep runs. The
import-linter contract cannot see this: the import goes through an entry point."""

import ast
from pathlib import Path

from conftest import requires_domainbed, run_python

pytestmark = requires_domainbed

PROBE = """
{imports}
from domainbed import algorithms
tools = sorted(m for m in sys.modules if m.startswith("lpa_domainbed.tools"))
print("LPA" in algorithms.ALGORITHMS, tools)
"""


def _train_script_imports() -> str:
    """The import statements of DomainBed's train script, read from its source."""
    import domainbed

    path = Path(domainbed.__file__).parent / "scripts" / "train.py"
    tree = ast.parse(path.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body
                     if isinstance(node, (ast.Import, ast.ImportFrom)))


def test_a_train_process_loads_no_tooling(tmp_path):
    imports = _train_script_imports()
    assert "from domainbed import algorithms" in imports  # the script was read
    run = run_python(["-c", PROBE.format(imports=imports)], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True []", run.stdout  # registered, and no tooling loaded


def test_a_sweep_process_gets_the_launchers(tmp_path):
    code = ("import sys, domainbed.command_launchers as C; "
            "print('local_parallel' in C.REGISTRY, 'submitit' in C.REGISTRY, "
            "'lpa_domainbed.tools.launchers' in sys.modules)")
    run = run_python(["-c", code], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True True True"
