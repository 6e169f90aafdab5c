"""The inferlet sandbox: users' generation programs run in wasmtime inside the engine.

- ``wit/inferlet.wit``: the ``potluck:inferlet`` world, the contract between
  the engine and an inferlet.
- ``guest/``: the guest SDK ``potluck_inferlet`` and the runner app that
  componentize-py turns into the generic Python runner component.
- ``build``: builds, compiles and caches the runner (once per change of sources).
- ``host``: the wasmtime engine, the linker, one Store per run with its limits.
- ``world``: what each import does for one run, always as that run's owner.
- ``runs``: ``RunManager`` and ``Run``, the Python API under the runs endpoints.

The sandbox never sees another tenant's handles: a run's context handles are
its own small numbers, and every engine call it makes names its owner.
"""

from .runs import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, Run, RunManager

__all__ = ["RunManager", "Run", "QUEUED", "RUNNING", "FINISHED", "FAILED", "CANCELLED"]
