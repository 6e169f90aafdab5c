"""Potluck's jupyter-server extension: connects this server's kernels to the engine, serves the lab's endpoints.

Enabled on install (``jupyter-config/jupyter_server_config.d/potluck.json``).
``extension.py`` finds the engine and exports it to kernels; ``handlers.py``
proxies the lab frontend's calls to it with this server's token.
"""

from __future__ import annotations

from .extension import PotluckExtension


def _jupyter_server_extension_points():
    return [{"module": "potluck.jupyter_ext"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from .handlers import setup_handlers
    ext = PotluckExtension(parent=serverapp, config=serverapp.config)
    url, how = ext.export_for_kernels()
    setup_handlers(serverapp.web_app, ext)
    serverapp.log.info("Potluck: kernels connect to the engine at %s (from %s)%s", url, how,
                       "" if ext.find_token() else "; no token yet: set POTLUCK_TOKEN or "
                       "c.PotluckExtension.token")


# the name older jupyter_server / notebook releases look for
load_jupyter_server_extension = _load_jupyter_server_extension
