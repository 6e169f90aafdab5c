"""Potluck in the notebook: ``%load_ext potluck.kernel``, or the "Python 3 (Potluck)" kernel.

Loading the extension registers the magics (``%%generate``, ``%%chat``,
``%%inferlet``, ``%potluck``), makes a ``PotluckError`` show as one line instead
of a traceback (an interrupted call too: ``Interrupted``), and puts the client in the namespace as ``potluck``::

    potluck.generate("The capital of France is", max_tokens=8)

The Python API is ``potluck.kernel.client``; it finds the engine from the
environment (``POTLUCK_URL``, ``POTLUCK_TOKEN`` or ``JUPYTERHUB_API_TOKEN``),
which ``potluck.jupyter_ext`` sets up for every kernel its server starts.
"""

from __future__ import annotations

import sys

from . import client
from .client import Client, Completion, Interrupted, PotluckError, RunResult, Stream

__all__ = ["client", "Client", "Completion", "Interrupted", "PotluckError", "RunResult", "Stream",
           "load_ipython_extension"]


def _show_potluck_error(shell, etype, value, tb, tb_offset=None):
    print(f"potluck: {value}", file=sys.stderr, flush=True)


def _after_cell(result) -> None:
    # Interrupting a cell that loops over potluck.stream() stops in the loop's body, where the
    # stream never sees it: close what is still open, so the engine cancels those generations.
    if isinstance(result.error_in_exec, KeyboardInterrupt):
        client.close_open_streams()


def load_ipython_extension(ip) -> None:
    from .magics import PotluckMagics
    ip.register_magics(PotluckMagics)
    ip.set_custom_exc((PotluckError, Interrupted), _show_potluck_error)
    ip.events.register("post_run_cell", _after_cell)
    ip.user_ns.setdefault("potluck", client)


def unload_ipython_extension(ip) -> None:
    ip.set_custom_exc((), None)
    try:
        ip.events.unregister("post_run_cell", _after_cell)
    except ValueError:
        pass
