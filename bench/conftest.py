"""Benchmarks run with `make bench` (pytest-benchmark); they are not part of the test suite."""

import os

os.environ.setdefault("BD_PROGRESS", "0")
