"""Cohort runs: the manifest, resumable case records, one case runner, local and Dask executors."""
