"""Sweeps: a search over an experiment's parameters, each trial an ordinary guarded run.

spec.py     the sweep as written (sweep.toml, launch_sweep's arguments), checked against the trainer
folder.py   the sweep folder's layout and state, and the lock only its writer holds
driver.py   the process that runs a sweep (the only importer of Optuna)
api.py      launch, status, stop, promote and revive, for the tools and the CLI
"""
