"""`capsgan sweep`: Ray Tune over training configs.

config.py (the sweep YAML), run.py (Ray start-up, the Tuner, resuming), trial.py (one trial: its
config, run folder and reports), report.py (results.csv / results.md, best_config.yaml).
Ray is imported only inside functions, so the config can be checked without it.
"""
