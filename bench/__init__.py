"""Benchmarks: each module is a script run from the repository root as
``python -m bench.NAME [options]`` and prints one JSON object as its last line.

Scripts import the product packages and the shared harness in ``testkit/``, never ``tests/``.
"""
