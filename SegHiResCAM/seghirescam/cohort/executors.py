"""How a cohort's cases run: the executors ``batch`` offers (plain data, no torch)."""

from __future__ import annotations

__all__ = ["EXECUTORS"]

EXECUTORS: dict[str, str] = {
    "local": "one case after another in this process",
    "dask": "each case a task on a Dask cluster (a local one with --workers N, or --scheduler ADDRESS)",
}
