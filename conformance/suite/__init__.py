"""The conformance property suite: one module per utility, plus cross-utility laws.

Run it with ``pytest --pyargs conformance.suite`` (or ``python -m conformance run``).
"""
