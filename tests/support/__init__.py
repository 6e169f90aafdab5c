"""What the tests and the benchmarks share: the real engine process and the fault helpers.

- ``engine_process``: ``EngineProcess`` (start, stop, kill a real ``potluck engine``; its tokens and
  clients), ``serve`` (a session fixture's body), ``Client`` and ``error_of``.
- ``faults``: reading an engine process's threads, fds and memory; clients that hang up
  mid-stream (``Storm``); waiting until the engine is quiet again (``settle``).

Imported as ``support.*``: pytest puts ``tests/`` on ``sys.path`` (``tests/conftest.py`` is not in a
package), and ``benchmarks/common.py`` does the same in one line. Nothing here imports a test module
or a benchmark, and nothing here loads a model in this process.
"""
