"""The command line of DomainBed's train script, checked when that script starts.

DomainBed's ``train.py`` reads its arguments itself; three of them go wrong silently or with a
traceback: ``--hparams`` that is not one JSON object (a ``json`` traceback, or ``dict.update``
of a list of pairs), ``--steps 0`` (read as "not given": the dataset's ``N_STEPS`` run) and a
negative ``--steps`` (no update, yet ``done`` is written). :func:`check` runs in the train
process when the script first asks DomainBed's registry for its hparams (right before it reads
``--hparams``) and ends the process with one line saying what to write.
"""

from __future__ import annotations

import sys

from lpa_domainbed.hparams_check import hparams_argument_problem

__all__ = ["check", "is_train_script", "problem"]


def _value(argv: list[str], option: str) -> str | None:
    text = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            text = argv[i + 1]
        elif arg.startswith(option + "="):
            text = arg.split("=", 1)[1]
    return text


def problem(argv: list[str]) -> str | None:
    """What is wrong with a train command line ``argv`` (without the program), or None."""
    found = hparams_argument_problem(argv)
    if found:
        return found
    for option in ("--steps", "--checkpoint_freq"):
        text = _value(argv, option)
        try:
            number = int(text) if text is not None else None
        except ValueError:
            continue  # argparse names a non-integer itself
        if number is not None and number <= 0:
            meaning = ("DomainBed reads 0 as 'not given' and would run the dataset's default "
                       "N_STEPS" if number == 0 and option == "--steps" else
                       "no update would run, yet the job would be marked done"
                       if option == "--steps" else "DomainBed would never or always evaluate")
            return f"{option} {number}: {meaning}; give a positive number, e.g. {option} 1000"
    return None


def is_train_script() -> bool:
    """Whether this process runs ``domainbed.scripts.train`` (``-m`` or its path)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    return spec_name == "domainbed.scripts.train" or sys.argv[0].replace("\\", "/").endswith(
        "domainbed/scripts/train.py")


def check() -> None:
    """In DomainBed's train script, exit with one line when its command line is wrong."""
    if is_train_script():
        found = problem(sys.argv[1:])
        if found:
            raise SystemExit(f"train: {found}")
