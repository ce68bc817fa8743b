"""The .pth autoload: cheap, never fatal, switchable."""

import sys

from conftest import HAVE_DOMAINBED, REPO, requires_domainbed, run_python


def test_pth_file_is_installed_and_imports_only_the_tiny_module():
    import sysconfig
    from pathlib import Path

    pth = Path(sysconfig.get_paths()["purelib"]) / "lpa_domainbed_autoload.pth"
    source = (REPO / "lpa_domainbed" / "_autoload.pth").read_text()
    assert pth.read_text() == source and "import lpa_domainbed._autoload" in source, \
        "run 'make setup' (pip install -e .) to install the autoload .pth"


def test_interpreter_start_imports_nothing_heavy(tmp_path):
    out = run_python(["-c", "import sys; print(sorted(m for m in sys.modules if m.split('.')[0]"
                            " in ('torch', 'domainbed', 'numpy', 'lpa_domainbed')))"],
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout) == ["lpa_domainbed", "lpa_domainbed._autoload"]
    assert out.stderr == ""


@requires_domainbed
def test_autoload_registers_in_a_fresh_interpreter_and_can_be_turned_off(tmp_path):
    code = ("import domainbed.algorithms as A, domainbed.datasets as D; "
            "print('LPA' in A.ALGORITHMS, hasattr(A, 'LPA'), 'RotatedDigits' in D.DATASETS)")
    on = run_python(["-c", code], cwd=tmp_path)
    assert on.stdout.split() == ["True", "True", "True"], on.stderr
    off = run_python(["-c", code], cwd=tmp_path, env={"LPA_DOMAINBED_AUTOLOAD": "0"})
    assert off.stdout.split() == ["False", "False", "False"], off.stderr


@requires_domainbed
def test_a_registration_failure_is_one_warning_not_a_crash(tmp_path):
    code = ("import lpa_domainbed.registration as r\n"
            "def boom(name, module): raise RuntimeError('simulated')\n"
            "r.on_module_loaded = boom\n"
            "import domainbed.algorithms, domainbed.datasets, domainbed.hparams_registry\n"
            "print('imported')\n")
    out = run_python(["-c", code], cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "imported"
    warnings = [l for l in out.stderr.splitlines() if l.startswith("lpa_domainbed:")]
    assert len(warnings) == 1 and "simulated" in warnings[0]
    assert "LPA_DOMAINBED_AUTOLOAD=0" in warnings[0]
