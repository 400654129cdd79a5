"""Logging and progress bars that behave in a terminal and in Snakemake's ``log:`` files."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Log to stderr, which each rule's shell redirects into its ``log:`` file."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "matplotlib", "PIL", "distributed", "asyncio", "alembic", "numcodecs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("landfuse")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar on stderr; in a log file it prints a line every 10 s rather than redrawing."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        file=sys.stderr,
        mininterval=0.2 if interactive else 10.0,
        ascii=not interactive,
        dynamic_ncols=interactive,
    )
