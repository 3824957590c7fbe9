"""Test and bench support: hardware-free doubles and harnesses shared by ``tests/`` and
``bench/`` (a fake driver, tiny policy bundles, a daemon in a thread or as a process, a trainer
process, simulated detector streams).

Not part of the product: ``pip install .`` installs only agent, drivers, plumbing and trainer
(pyproject ``packages.find``), and no product package imports this one (tests/test_layers.py).
It is importable from the repository root, where the tests and ``python -m bench.NAME`` run.
"""
