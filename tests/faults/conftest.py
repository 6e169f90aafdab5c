"""Fault tests: the real ``potluck engine`` process, killed, disconnected from, cut off from its Hub.

They use the launcher the service tests and benchmarks share (``tests/support/engine_process.py``)
and the fault helpers (``tests/support/faults.py``); each module starts its own engine, because
each one breaks it in its own way.
"""
