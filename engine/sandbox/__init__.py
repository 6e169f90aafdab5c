"""The inferlet sandbox: users' generation programs run in wasmtime inside the engine.

- ``wit/inferlet.wit``: the ``potluck:inferlet`` world, the contract between
  the engine and an inferlet.
- ``guest/``: the guest SDK ``potluck_inferlet`` and the runner app that
  componentize-py turns into the generic Python runner component (with the
  engine's ``textstream.py`` bundled in as ``potluck_textstream``).
- ``build``: the wasmtime configuration; builds, compiles and caches the
  runner (once per change of sources).
- ``wasm``: the wasmtime plumbing: the linker, the epoch ticker, one Store per
  run with its limits.
- ``host_calls``: each import of the world declared once (checked against the
  ``.wit`` at import), and what it does for one run, always as its owner.
- ``run``: ``Run``, one run's state, events, inbox and thread.
- ``topics``: ``Topics``, the owner's message topics between runs.
- ``manager``: ``RunManager``, the Python API under the runs endpoints.
- ``port``: ``EnginePort``, the only engine surface the sandbox calls.

The sandbox never sees another tenant's handles: a run's context handles are
its own small numbers, and every engine call it makes names its owner. It
never mutates state the engine's loop thread owns: counts and fuel are
reported through the port.
"""

from ..protocol import CANCELLED, DONE_STATES, FAILED, FINISHED, QUEUED, RUNNING
from .manager import RunManager
from .run import Run

__all__ = ["RunManager", "Run", "QUEUED", "RUNNING", "FINISHED", "FAILED", "CANCELLED", "DONE_STATES"]
