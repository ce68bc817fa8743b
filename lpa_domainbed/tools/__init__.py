"""The tooling around the algorithms: command line, sweeps, tables and paired statistics,
command launchers, benchmark and figures.

Nothing in the core (``lpa_domainbed.algorithms``, ``perturb``, ``datasets``, the hyperparameter
and registration modules, which every DomainBed train process imports) imports this package;
the contract in ``pyproject.toml`` (import-linter) enforces it. The launchers reach DomainBed
like any user plugin, through the ``lpa_domainbed.plugins`` entry point.
"""
