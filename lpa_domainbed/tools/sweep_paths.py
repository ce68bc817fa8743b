"""The directories a sweep is given (``--data_dir``, ``--output_dir``), checked before anything
is made: DomainBed's scripts read a value starting with ``-`` as an option (every job would end
in a usage error), and a path longer than the file system allows, counting what the jobs put
below it, would fail with a raw ``OSError`` midway.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_directory"]

# what DomainBed and the launchers put below an output directory: <32-hex job>/attempt-<n>/<file>
_JOB_PATH_ROOM = len("/" + "0" * 32 + "/attempt-100/results.jsonl.tmp")  # a job hash and its files


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name or path too long to look up
        return False


def check_directory(option: str, value) -> None:
    """A ``--data_dir``/``--output_dir`` DomainBed's scripts can take: ValueError when it starts
    with ``-`` (read as an option) or is longer than the file system allows, counting what the
    jobs put below it."""
    text = str(value)
    if text.startswith("-"):
        raise ValueError(f"{option} {text!r} starts with '-', which DomainBed's scripts would "
                         f"take for an option: pass it as ./{text}")
    path = Path(text).absolute()
    existing = next(p for p in (path, *path.parents) if _exists(p))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise ValueError(f"{option}: the name {part[:24]}... has {len(os.fsencode(part))} "
                             f"bytes, more than the file system allows ({name_max}): choose a "
                             f"shorter name")
    length = len(os.fsencode(str(path)))
    if length + _JOB_PATH_ROOM >= path_max:
        raise ValueError(f"{option}: {str(path)[:40]}... is {length} bytes long; with a job's "
                         f"directory and files below it a path would pass the file system's "
                         f"limit of {path_max} bytes: choose a shorter path")
