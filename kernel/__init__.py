"""Potluck in the notebook: ``%load_ext potluck.kernel``, or the "Python 3 (Potluck)" kernel.

Loading the extension registers the magics (``%%generate``, ``%%chat``,
``%%inferlet``, ``%potluck``), makes a ``PotluckError`` show as one line instead
of a traceback, and puts the client in the namespace as ``potluck``::

    potluck.generate("The capital of France is", max_tokens=8)

The Python API is ``potluck.kernel.client``; it finds the engine from the
environment (``POTLUCK_URL``, ``POTLUCK_TOKEN`` or ``JUPYTERHUB_API_TOKEN``),
which ``potluck.jupyter_ext`` sets up for every kernel its server starts.
"""

from __future__ import annotations

import sys

from . import client
from .client import Client, Completion, PotluckError, RunResult, Stream

__all__ = ["client", "Client", "Completion", "PotluckError", "RunResult", "Stream", "load_ipython_extension"]


def _show_potluck_error(shell, etype, value, tb, tb_offset=None):
    print(f"potluck: {value}", file=sys.stderr, flush=True)


def load_ipython_extension(ip) -> None:
    from .magics import PotluckMagics
    ip.register_magics(PotluckMagics)
    ip.set_custom_exc((PotluckError,), _show_potluck_error)
    ip.user_ns.setdefault("potluck", client)


def unload_ipython_extension(ip) -> None:
    ip.set_custom_exc((), None)
