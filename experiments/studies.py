"""What the studies under experiments/ share: where the repository is, how a measured spread is
written, and how a generated table replaces its block between markers in a hand-written page.

A study's driver puts this folder on sys.path (`sys.path.insert(0, str(Path(__file__).parents[1]))`);
nothing in the packages imports experiments/.
"""

from __future__ import annotations

import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def spread(values: list[float], scale: float = 100.0, digits: int | None = None) -> str:
    """median (min–max) of `values` times `scale`; one decimal for percentages, three otherwise."""
    if not values:
        return "—"
    digits = (1 if scale == 100.0 else 3) if digits is None else digits
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):.{digits}f} ({v[0]:.{digits}f}–{v[-1]:.{digits}f})"


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """`text` with what lies between the markers `begin` and `end` replaced by `body` (the block
    appended at the end when the markers are not there yet)."""
    if begin not in text:
        return text.rstrip() + f"\n\n{begin}\n{body}\n{end}\n"
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{body}\n{end}{rest.split(end, 1)[1]}"


def training(row: dict) -> str:
    """Which training of the attacked model a run used, named by its ACC / ASR before any defense."""
    return f"{100 * row['acc_pre']:.1f} / {100 * row['asr_pre']:.1f}"
