"""The servers a user would write first, run by `benchmarks.serving` with uvicorn's defaults as the baselines."""
