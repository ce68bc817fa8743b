"""Published numbers beside ours: the reference CSV shipped as package data (installed use needs
no checkout), its check, and the comparison table of :mod:`lpa_domainbed.tools.tables`."""

from __future__ import annotations

import math
import shutil
from importlib import resources
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from lpa_domainbed.tools.tables_frame import AVERAGE

__all__ = ["REFERENCE_COLUMNS", "ReferenceCsvError", "published_reference", "copy_reference",
           "read_reference", "compare_with_published", "comparison_markdown"]

#: the columns a published-results CSV needs, besides one column per dataset
REFERENCE_COLUMNS = ("source", "model_selection", "algorithm")


class ReferenceCsvError(ValueError):
    """A --reference_csv that cannot be read as published results; the message names the file
    and the columns it needs."""


def published_reference() -> Path:
    """The published-results CSV shipped with the package (a copy of the repository's
    results/reference/published_results.csv)."""
    return Path(str(resources.files("lpa_domainbed.tools") / "data" / "published_results.csv"))


def copy_reference(source=None, destination=Path("results/reference/published_results.csv")):
    """Copy a published-results CSV (default: the packaged one), unchanged."""
    source = published_reference() if source is None else source
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, destination)
    return destination


def read_reference(path) -> pd.DataFrame:
    """The published results in ``path``, or :class:`ReferenceCsvError` saying what is wrong."""
    needs = (f"it needs a header row with the columns {', '.join(REFERENCE_COLUMNS)} and one "
             f"column per dataset (e.g. PACS), as in {published_reference().name} shipped with "
             f"this package")
    path = Path(path)
    if not path.is_file():
        raise ReferenceCsvError(f"--reference_csv {path} does not exist or is not a file; {needs}")
    try:
        reference = pd.read_csv(path, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ReferenceCsvError(f"--reference_csv {path} is not a UTF-8 CSV file ({first}); "
                             f"{needs}") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in reference.columns]
    if missing:
        raise ReferenceCsvError(f"--reference_csv {path} lacks the column(s) {', '.join(missing)} "
                             f"(it has: {', '.join(map(str, reference.columns))}); {needs}")
    return reference


def compare_with_published(overview, reference):
    """Our dataset averages beside published ones (same algorithm and model selection).

    Rows whose model selection is 'unspecified' are shown beside our training-domain
    validation numbers, labelled as such. Returns an empty DataFrame when nothing matches.
    """
    ours = overview[overview.dataset != AVERAGE].set_index(["selection", "dataset", "algorithm"])
    rows = []
    for published in reference.to_dict("records"):
        selection = published["model_selection"]
        our_selection = "training_domain_validation" if selection == "unspecified" else selection
        for dataset in overview.dataset.unique():
            key = (our_selection, dataset, published["algorithm"])
            if dataset not in published or pd.isna(published[dataset]) or key not in ours.index:
                continue
            our_mean = ours.loc[key, "mean"]
            if not math.isnan(our_mean):
                rows.append({"dataset": dataset, "algorithm": published["algorithm"],
                             "our selection": our_selection, "ours": our_mean,
                             "published": float(published[dataset]),
                             "published selection": selection, "source": published["source"],
                             "published backbone": _text(published.get("backbone")),
                             "ours - published": our_mean - float(published[dataset])})
    return pd.DataFrame(rows)


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def comparison_markdown(comparison):
    """The text of reference_comparison.md."""
    return ("# Ours vs published (dataset averages, %)\n\nPublished rows with 'unspecified' "
            "model selection are shown beside our training-domain validation numbers. Each "
            "source's backbone is in 'published backbone'; sweeps/table2.toml trains the "
            "same, torchvision's ResNet-50 pretrained on ImageNet (resnet50_augmix = false)."
            "\n\n"
            + tabulate(comparison, headers="keys", tablefmt="pipe", floatfmt=".1f",
                       showindex=False) + "\n")
