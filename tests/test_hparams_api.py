"""Declarative hyperparameters: an HParam carries what it accepts, one way to change an
inherited default, one place that merges defaults, the sweep's check, no import cycle."""

from __future__ import annotations

import ast

import pytest

from conftest import REPO, requires_domainbed

from lpa_domainbed import hparams as hp


def test_an_hparam_says_what_is_wrong_with_a_value():
    mode = hp.HParam("lpa_mode", "exact", choices=("exact", "amortized"))
    assert mode.problem("amortized") is None
    assert mode.problem("fast") == \
        "lpa_mode='fast' is invalid: expected one of ('exact', 'amortized')"
    assert mode.problem(3) == "lpa_mode=3 has type int; expected str"
    eps = hp.HParam("eps", 0.1, hp.uniform(0, 1), check=hp.at_least(0))
    assert eps.problem(2) is None  # an int for a float
    assert eps.problem(-1.0) == "eps=-1.0 is invalid: expected a value >= 0"
    assert eps.problem(float("nan")) == "eps=nan is not a finite number"
    half_open = hp.HParam("p", 0.1, check=hp.within(0, 1, "[)"))
    assert half_open.problem(0.0) is None and half_open.problem(1.0) is not None
    assert "expected a value in [0, 1)" in half_open.problem(1.0)


def test_a_bad_default_or_a_fixed_value_that_is_not_the_default_is_refused_at_declaration():
    with pytest.raises(ValueError, match="'lpa_mode': its default lpa_mode='x' is invalid"):
        hp.HParam("lpa_mode", "x", choices=("exact", "amortized"))
    with pytest.raises(ValueError, match=r"fixed\(3\) differs from its default 4"):
        hp.HParam("steps", 4, hp.fixed(3))
    assert hp.HParam("steps", 3, hp.fixed(3)) == hp.HParam("steps", 3)  # not searched


def test_a_not_searched_hparam_draws_its_default():
    import numpy as np

    state = np.random.RandomState(0)
    assert hp.HParam("kind", "element", choices=("element", "block")).draw(state) == "element"


class _Base:
    @classmethod
    def hparam_specs(cls, dataset=None):
        return [hp.HParam("mode", "a", hp.choice(["a", "b"]), choices=("a", "b", "c")),
                hp.HParam("layer", "default", type=(str, list))]


def test_hparam_defaults_changes_an_inherited_default_in_one_line():
    sub = type("Sub", (_Base,), {"HPARAM_DEFAULTS": {"layer": ["x", "y"], "mode": "c"}})
    assert hp.defaults_of(sub) == {"mode": "c", "layer": ["x", "y"]}
    specs = {s.name: s for s in hp.specs_of(sub)}
    assert specs["mode"].sample is not None  # a searched distribution stays
    grandchild = type("Grand", (sub,), {"HPARAM_DEFAULTS": {"mode": "b"}})
    assert hp.defaults_of(grandchild) == {"mode": "b", "layer": ["x", "y"]}


@pytest.mark.parametrize("attrs,message", [
    ({"HPARAM_DEFAULTS": {"mode": "z"}},
     "Sub.HPARAM_DEFAULTS: HParam 'mode': its default mode='z' is invalid: expected one of"),
    ({"HPARAM_DEFAULTS": {"modes": "a"}},
     r"Sub.HPARAM_DEFAULTS names \['modes'\], which Sub does not declare"),
    ({"hparam_specs": classmethod(lambda cls, d=None: _Base.hparam_specs(d) + [
        hp.HParam("mode", "b")])},
     r"declares \['mode'\] more than once; to change an inherited default write "
     r"HPARAM_DEFAULTS = \{'mode': ...\}"),
])
def test_a_wrong_override_names_the_fix(attrs, message):
    with pytest.raises(ValueError, match=message):
        hp.specs_of(type("Sub", (_Base,), attrs))


def _package_imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return {n for n in names if n.startswith("lpa_domainbed")}


def test_no_import_cycle_declarations_import_nothing_of_the_package():
    assert _package_imports(REPO / "lpa_domainbed" / "hparams.py") == set()
    assert "lpa_domainbed.hparams" in _package_imports(REPO / "lpa_domainbed" / "hparams_check.py")


def test_hparams_argument_problem():
    from lpa_domainbed.hparams_check import hparams_argument_problem as problem

    assert problem(["--dataset", "X"]) is None
    assert problem(["--hparams", '{"lpa_eps": 0.2}']) is None
    assert problem(["--hparams", ""]) is None  # DomainBed skips an empty text
    assert "is not valid JSON" in problem(["--hparams={'a': 1}"])
    assert "is a JSON null, not an object" in problem(["--hparams", "null"])
    assert problem(["--hparams_seed", "3"]) is None


# -- with DomainBed: every registered algorithm, the train-time check, the sweep's check ----
@requires_domainbed
def test_every_algorithm_declares_valid_defaults_and_no_check_hparams_enum_tuples():
    from lpa_domainbed.algorithms import load
    from lpa_domainbed.hparams_check import registry_types, validate

    for name, cls in load().items():
        specs = hp.specs_of(cls)
        assert all(s.problem(s.default) is None for s in specs), name
        merged = validate(name, hp.specs_of(cls), registry_types(name), {})
        assert merged == hp.defaults_of(cls), name
    assert hp.defaults_of(load()["LPL"])["perturb_layer"] == "logits"
    assert hp.defaults_of(load()["LPA_Amortized"])["lpa_mode"] == "amortized"
    # check_hparams is left for checks of several hparams together; no value tuples in it
    for path in (REPO / "lpa_domainbed" / "algorithms").glob("*.py"):
        text = path.read_text()
        if "def check_hparams(self):" in text:
            body = text.split("def check_hparams(self):", 1)[1].split("\n    def ", 1)[0]
            assert "for name, allowed in" not in body and " in (" not in body, path.name


@requires_domainbed
def test_a_new_enum_is_one_line_and_checked_at_construction():
    from lpa_domainbed.algorithms.lpa import LPA
    from lpa_domainbed.hparams_check import registry_types, validate

    line = hp.HParam("lpa_test_schedule", "flat", choices=("flat", "cosine"))
    cls = type("LPAWithSchedule", (LPA,), {"hparam_specs": classmethod(
        lambda c, d=None: LPA.hparam_specs.__func__(c, d) + [line])})
    specs, types = hp.specs_of(cls), registry_types("LPA")
    assert validate("LPA", specs, types, {"lpa_test_schedule": "cosine"})[
        "lpa_test_schedule"] == "cosine"
    with pytest.raises(ValueError, match=r"lpa_test_schedule='cos' is invalid: expected one of "
                                         r"\('flat', 'cosine'\)"):
        validate("LPA", specs, types, {"lpa_test_schedule": "cos"})


@requires_domainbed
@pytest.mark.parametrize("algorithms,hparams,fragments", [
    (["LPA", "ERM"], {"lpa_eps": 0.2, "lr": 1e-4, "user_x": [1]}, []),
    (["LPA"], {"lpa_epss": 0.2},
     ["LPA: unknown hparam 'lpa_epss' for LPA. Did you mean 'lpa_eps'"]),
    (["LPA", "ADA"], {"lpa_eps": 0.2}, ["ADA: unknown hparam 'lpa_eps' for ADA"]),
    (["ERM"], {"lr_typo": 1.0}, ["ERM: unknown hparam 'lr_typo' for ERM"]),
    (["LPA", "LPL"], {"lpa_mode": "fast", "lr": "1e-4"},
     ["LPA: hparam lpa_mode='fast' is invalid: expected one of ('exact', 'amortized')",
      "LPA: hparam lr='1e-4' has type str; expected float", "LPL: hparam lpa_mode='fast'"]),
    (["NoSuchAlg"], {}, ["NoSuchAlg: Algorithm not found: NoSuchAlg"]),
])
def test_validate_sweep_hparams_lists_every_problem_naming_the_algorithm(
        algorithms, hparams, fragments):
    from lpa_domainbed.tools.sweeps import validate_sweep_hparams

    if not fragments:
        validate_sweep_hparams(algorithms, hparams)
        return
    with pytest.raises(ValueError) as error:
        validate_sweep_hparams(algorithms, hparams)
    lines = str(error.value).splitlines()
    for fragment in fragments:
        assert any(fragment in line for line in lines), (fragment, lines)


@pytest.mark.parametrize("argv,fragment", [
    (["--steps", "0"], "--steps 0: DomainBed reads 0 as 'not given'"),
    (["--steps=-3"], "--steps -3: no update would run, yet the job would be marked done"),
    (["--checkpoint_freq", "0"], "--checkpoint_freq 0"),
    (["--hparams", "[1, 2]"], "is a JSON list, not an object"),
])
def test_a_wrong_train_command_line_is_one_line_saying_what_to_write(argv, fragment):
    from lpa_domainbed.train_command_line import problem

    assert fragment in problem(["--dataset", "X", *argv])
    assert problem(["--dataset", "X", "--steps", "5", "--checkpoint_freq", "2"]) is None
