"""Bad plugin settings and a broken package at interpreter start: each row is an input, the
expected exit status, a fragment of the message (one line on stderr) and what must not be
printed. DomainBed keeps working in every row."""

from __future__ import annotations

import pytest

from conftest import REPO, requires_domainbed, run_python

IMPORT = "import domainbed.algorithms as A; print('alive', 'ERM' in A.ALGORITHMS)"
ONE_LINE = "a plugin must be a .py file (e.g. {dir}/my_algs.py) or an importable module name"


def plugin_dir_path(tmp_path):
    (tmp_path / "mydir").mkdir()
    return ["-c", IMPORT], {"LPA_DOMAINBED_PLUGINS": f"{tmp_path / 'mydir'}/"}


def plugin_dir_name(tmp_path):  # a bare name that is a directory without __init__.py
    (tmp_path / "mydir").mkdir()
    return ["-c", IMPORT], {"LPA_DOMAINBED_PLUGINS": "mydir"}


def plugin_not_py(tmp_path):
    (tmp_path / "notes.txt").write_text("not python\n")
    return ["-c", IMPORT], {"LPA_DOMAINBED_PLUGINS": str(tmp_path / "notes.txt")}


def plugin_exits(tmp_path):  # sys.exit at import: DomainBed's processes died of it
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    return ["-c", IMPORT], {"LPA_DOMAINBED_PLUGINS": str(tmp_path / "exits.py")}


def plugin_raises_system_exit(tmp_path):  # a bare name, imported from the working directory
    (tmp_path / "stops.py").write_text("raise SystemExit('stop here')\n")
    return ["-c", IMPORT], {"LPA_DOMAINBED_PLUGINS": "stops"}


def broken_package_init(tmp_path):
    """A copy of the installed .pth in a site directory, in front of a package whose
    ``__init__.py`` has a syntax error (``-S``: only this site directory is processed)."""
    package = tmp_path / "pkg" / "lpa_domainbed"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A broken edit."""\ndef register(:\n')
    (package / "_autoload.py").write_text("")
    site = tmp_path / "site"
    site.mkdir()
    (site / "lpa_domainbed_autoload.pth").write_text(
        (REPO / "lpa_domainbed" / "_autoload.pth").read_text())
    code = ("import sys, site; sys.path.insert(0, 'pkg'); site.addsitedir('site'); "
            "print('alive', True)")
    return ["-S", "-c", code], {}


# (make input, exit status, message fragment, what must not be printed)
ROWS = [
    (plugin_dir_path, 0, "mydir is a directory: " + ONE_LINE, "Traceback"),
    (plugin_dir_name, 0, "mydir is a directory: " + ONE_LINE, "Traceback"),
    (plugin_not_py, 0, "notes.txt is not a .py file: a plugin must be a .py file or an "
                       "importable module name", "Traceback"),
    (plugin_exits, 0, "lpa_domainbed: module 'exits' (LPA_DOMAINBED_PLUGINS={tmp}/exits.py) "
                      "failed to import: it called sys.exit(3) at import (SystemExit", "Traceback"),
    (plugin_raises_system_exit, 0, "module 'stops' (LPA_DOMAINBED_PLUGINS=stops) failed to "
                                   "import: it called sys.exit('stop here') at import",
     "Traceback"),
    (broken_package_init, 0, "lpa_domainbed: cannot import the package at interpreter start: "
                             "{tmp}/pkg/lpa_domainbed/__init__.py:2: SyntaxError: invalid syntax",
     "Remainder of file ignored"),
]


@requires_domainbed
@pytest.mark.parametrize("make,status,fragment,forbidden", ROWS, ids=[r[0].__name__ for r in ROWS])
def test_a_bad_plugin_or_package_is_one_line_and_everything_else_works(
        tmp_path, make, status, fragment, forbidden):
    args, env = make(tmp_path)
    out = run_python(args, cwd=tmp_path, env=env)
    assert out.returncode == status, out.stderr
    assert out.stdout.split() == ["alive", "True"], out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    expected = fragment.format(tmp=tmp_path.resolve(), dir=tmp_path.resolve() / "mydir")
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert forbidden not in out.stderr
