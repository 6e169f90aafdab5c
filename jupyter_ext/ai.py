"""Potluck as jupyter-ai's default model: the optional ``jupyter-potluck[ai]`` preset.

jupyter-ai 3 calls every model through LiteLLM, and LiteLLM's ``openai/<model>`` provider
reads ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` from the environment at each call. The
Potluck server extension (``extension.py``, or ``hub_config`` under a Hub) already puts the
engine's ``/v1`` and this server's own token there, so the only thing jupyter-ai still needs
is *which* model to ask for. This module supplies it, in two places:

- **Jupyternaut** (the chat): a server extension, enabled on install by
  ``jupyter-config/jupyter_server_config.d/potluck-ai.json``. When it is linked (after
  jupyter-ai's own extensions, which sort before it) it sets Jupyternaut's
  ``initial_language_model`` to ``openai/<served model>``, unless the admin configured one,
  and exports ``POTLUCK_MODEL`` so this server's kernels know the name too. Without
  jupyter-ai installed it does nothing.
- **``%%ai``** (the magics): ``%load_ext potluck.jupyter_ext.ai`` loads jupyter-ai's magics
  with an alias ``potluck`` for the served model, made the default, so ``%%ai`` alone answers
  from Potluck.

The served model's name is ``c.PotluckAI.model``, else ``$POTLUCK_MODEL``, else asked once of
the engine's ``GET /v1/models``. The key is never written anywhere: not into jupyter-ai's
config file (which its settings page shows to the browser), not into aliases; LiteLLM reads it
from the environment when it calls. When the environment names another OpenAI endpoint (a
user's own key), nothing here points jupyter-ai at Potluck, so that key is never sent to it.
"""

from __future__ import annotations

import json
import os
import urllib.request

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

ALIAS = "potluck"                     # the name `%%ai` knows the served model by
MODEL_ENV = "POTLUCK_MODEL"
JUPYTERNAUT = "jupyter_ai_jupyternaut"


class PotluckAI(LoggingConfigurable):
    """Settings of the preset (``c.PotluckAI.*`` in jupyter_server_config.py or ipython_kernel_config.py)."""

    model = Unicode(
        "",
        help="""The engine's model name jupyter-ai asks for. Default: $POTLUCK_MODEL, else the first
        model the engine's GET /v1/models lists for this user.""",
    ).tag(config=True)

    discovery_timeout = Float(5.0, help="Seconds to wait for the engine's GET /v1/models.").tag(config=True)

    def potluck_endpoint(self) -> str:
        """``$OPENAI_BASE_URL`` when it is the engine's ``/v1`` (what LiteLLM will call), else ''."""
        base = os.environ.get("OPENAI_BASE_URL", "").rstrip("/")
        engine = os.environ.get("POTLUCK_URL", "").rstrip("/")
        if base and engine and base == engine + "/v1":
            return base
        return ""

    def served_model(self) -> str:
        """The model's name, or '' when OPENAI_BASE_URL is not the engine or the engine names none."""
        base = self.potluck_endpoint()
        if not base:
            return ""
        if self.model or os.environ.get(MODEL_ENV):
            return self.model or os.environ[MODEL_ENV]
        req = urllib.request.Request(base + "/models",
                                     headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"})
        try:
            with urllib.request.urlopen(req, timeout=self.discovery_timeout) as resp:
                data = json.load(resp).get("data") or []
        except (OSError, ValueError) as e:
            self.log.warning("Potluck AI: could not list the engine's models at %s/models (%s); "
                             "set $%s or c.PotluckAI.model", base, e, MODEL_ENV)
            return ""
        if not (data and isinstance(data[0], dict) and data[0].get("id")):
            self.log.warning("Potluck AI: the engine at %s serves no model to this user", base)
            return ""
        return str(data[0]["id"])


def litellm_model(name: str) -> str:
    """LiteLLM's id for the served model: its OpenAI-compatible provider, which reads OPENAI_* at each call."""
    return f"openai/{name}"


# ------------------------------------------------------------------ Jupyternaut (server side)
def _jupyter_server_extension_points():
    return [{"module": "potluck.jupyter_ext.ai"}]


def _link_jupyter_server_extension(serverapp) -> None:
    # Linked after jupyter-ai's extensions (jupyter_server links in name order, and every
    # jupyter_ai* sorts before potluck.*), before any of them is loaded: Jupyternaut reads
    # initial_language_model when it loads, so the trait is set on its app here.
    package = serverapp.extension_manager.extensions.get(JUPYTERNAUT)
    apps = [p.app for p in package.extension_points.values() if p.app is not None] if package else []
    if not apps:
        return
    if "initial_language_model" in serverapp.config.get("JupyternautExtension", {}):
        serverapp.log.info("Potluck AI: Jupyternaut's default model is set by the config; left alone")
        return
    # The server extension exports OPENAI_* when it loads; under a Hub hub_config already has.
    from .extension import PotluckExtension
    PotluckExtension(parent=serverapp, config=serverapp.config).export_for_kernels()
    preset = PotluckAI(parent=serverapp, config=serverapp.config)
    if not preset.potluck_endpoint():
        serverapp.log.info("Potluck AI: OPENAI_BASE_URL is not the engine's /v1; jupyter-ai's default left alone")
        return
    name = preset.served_model()
    if not name:
        return
    os.environ[MODEL_ENV] = name          # kernels started by this server inherit it (`%%ai`)
    for app in apps:
        app.initial_language_model = litellm_model(name)
    serverapp.log.info("Potluck AI: Jupyternaut's default model is %s at %s", litellm_model(name),
                       os.environ["OPENAI_BASE_URL"])


def _load_jupyter_server_extension(serverapp) -> None:
    """Nothing to load: all of it happened at link time."""


# ------------------------------------------------------------------ %%ai (kernel side)
def load_ipython_extension(ipython) -> None:
    """``%load_ext potluck.jupyter_ext.ai``: jupyter-ai's magics, with Potluck as ``%%ai``'s default."""
    name = PotluckAI(parent=ipython, config=ipython.config).served_model()
    if not name:
        raise RuntimeError("Potluck AI: no Potluck model for %%ai: OPENAI_BASE_URL is not the engine's /v1 "
                           "($POTLUCK_URL + v1), or the engine named no model (see the warning above)")
    # The magics read these traits when they are constructed: config first, then load.
    # api_key_name stays None: LiteLLM takes OPENAI_API_KEY from the environment.
    ipython.config.AiMagics.initial_aliases = {
        **ipython.config.AiMagics.get("initial_aliases", {}),
        ALIAS: {"target": litellm_model(name), "api_base": None, "api_key_name": None},
    }
    if "initial_language_model" not in ipython.config.AiMagics:
        ipython.config.AiMagics.initial_language_model = ALIAS
    ipython.extension_manager.load_extension("jupyter_ai_magic_commands")
