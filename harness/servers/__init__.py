"""Hosts the harness can start for itself: the simulated host and the embedded Foundry Local host.

The measuring code never imports this package; `harness run` starts these as child processes and
reads their ready line (`ready.py`).
"""
