"""jupyter-ai 3 with the ``jupyter-potluck[ai]`` preset answers through the real engine.

jupyter-ai (57 packages and a lab extension) lives in its own venv, ``.venv-ai`` (``make venv``
makes it, sharing ``.venv``'s packages), so the lab's browser tests never load it; these tests
drive it there in a subprocess and skip without it. The subprocess starts a real Jupyter server
app with the repository's ``jupyter-config`` (the preset's extension enabled as an install
enables it) and the environment ``hub_config`` gives a user's server, then sends one chat
message through Jupyternaut's ``process_message``: the code a chat message runs, its agent
(``ChatLiteLLM`` with the 14 built-in tools bound) included. Only the chat room is in-memory (a
real ``YChat`` with no browser on the other side) and the persona has no manager (no MCP
servers). LiteLLM's own pre-call hook records the request body as sent.

Jupyternaut's first request is ~6,050 prompt tokens (its system prompt and the tools' schemas):
more than the shared ``engine_proc``'s KV pool (256 pages of 16 tokens), so this module starts
its own engine with room for the model's whole context (8,192 tokens). Its prefill is most of
this module's time (1-2 minutes on a 2-core CPU); a second message reuses the cached prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.engine_process import serve

ROOT = Path(__file__).resolve().parents[2]
AI_PYTHON = ROOT / ".venv-ai" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    subprocess.run([str(AI_PYTHON), "-c", "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in "
                    "('jupyter_ai_jupyternaut', 'jupyter_ai_magic_commands', 'potluck.jupyter_ext.ai')))"],
                   capture_output=True).returncode != 0 if AI_PYTHON.exists() else True,
    reason=f"jupyter-ai is not installed in {AI_PYTHON.parent.parent} (`make venv` makes that venv)")

# Run in .venv-ai. argv: the chat message. Prints one JSON line.
JUPYTERNAUT = r"""
import asyncio, json, sys, time
import litellm
from litellm.integrations.custom_logger import CustomLogger

sent = []
class Recorder(CustomLogger):
    def log_pre_api_call(self, model, messages, kwargs):
        sent.append(kwargs.get("additional_args", {}).get("complete_input_dict") or {})
litellm.callbacks = [Recorder()]

async def main():
    from jupyter_server.serverapp import ServerApp
    app = ServerApp()
    app.initialize(argv=["--ServerApp.open_browser=False"], new_httpserver=False)
    from jupyter_ai_jupyternaut.jupyternaut.jupyternaut import JupyternautPersona
    from jupyterlab_chat.models import Message
    from jupyterlab_chat.ychat import YChat
    chat = YChat()
    persona = JupyternautPersona(chat=chat, config=app.config)
    persona.get_mcp_settings = lambda: None          # no persona manager: no MCP servers
    await persona.process_message(Message(id="m1", time=time.time(), body=sys.argv[1], sender="alice"))
    replies = [m.body for m in chat.get_messages() if m.sender == persona.id]
    print(json.dumps({"default_model": JupyternautPersona.config_manager.chat_model, "replies": replies,
                      "requests": [{"model": b.get("model"), "tools": [t["function"]["name"] for t in b.get("tools") or []],
                                    "tool_choice": b.get("tool_choice")} for b in sent]}))

asyncio.run(main())
"""

# Run in .venv-ai: `%load_ext potluck.jupyter_ext.ai`, then `%%ai` with no model named.
MAGIC = r"""
import json, sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
try:
    ip.run_line_magic("load_ext", "potluck.jupyter_ext.ai")
except RuntimeError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
out = ip.run_cell_magic("ai", "-f text", sys.argv[1])
print(json.dumps({"answer": str(out)}))
"""


@pytest.fixture(scope="module")
def ai_engine(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("potluck-ai-data"), kv_pages=512)


def ai_env(engine, tmp_path, tenant: str, served: str = "") -> dict:
    """A user's server environment under the Hub: the engine, its /v1 and the user's token."""
    token = engine.token(tenant)
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True, exist_ok=True)
    if served:
        # What an admin may set beside the preset (jupyter-ai's own trait): a short answer is enough here.
        (home / "config" / "jupyter_server_config.json").write_text(json.dumps(
            {"JupyternautExtension": {"model_parameters": {f"openai/{served}": {"max_tokens": 8, "temperature": 0}}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "POTLUCK_", "JUPYTER"))}
    return {**env, "HOME": str(home), "POTLUCK_URL": engine.url + "/", "POTLUCK_TOKEN": token,
            "OPENAI_BASE_URL": engine.url + "/v1", "OPENAI_API_KEY": token,
            # the repository's jupyter-config/ (what the wheel installs) and nothing of the user's
            "JUPYTER_CONFIG_PATH": str(ROOT / "jupyter-config"), "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True"}      # never fetch LiteLLM's price list


def run_ai(script: str, arg: str, env: dict, cwd: Path) -> dict:
    proc = subprocess.run([str(AI_PYTHON), "-c", script, arg], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_jupyternaut_answers_through_potluck_with_its_tools(ai_engine, tmp_path):
    me = ai_engine.client("jupyternaut-user")
    served = me.get("/v1/models").json()["data"][0]["id"]
    before = me.get("/api/me").json()["usage"]
    out = run_ai(JUPYTERNAUT, "Say hi.", ai_env(ai_engine, tmp_path, "jupyternaut-user", served), tmp_path)
    # The preset made the served model Jupyternaut's default, with nothing pasted by the user.
    assert out["default_model"] == f"openai/{served}"
    assert out["requests"], "Jupyternaut sent no request"
    first = out["requests"][0]
    assert first["model"] == served
    # The agent bound Jupyternaut's built-in tools (14 in jupyter-ai-jupyternaut 0.1), and the engine took them.
    assert {"read_notebook_cells", "add_cell", "run_cell", "bash"} <= set(first["tools"]), first["tools"]
    reply = "".join(out["replies"])
    assert reply.strip() and not reply.startswith("Error:"), out["replies"]
    # The key (the user's token) is in no file jupyter-ai writes or shows: its config holds the model only.
    config = (tmp_path / "home" / "data" / "jupyter_ai" / "config.json").read_text()
    assert f"openai/{served}" in config and ai_engine.token("jupyternaut-user") not in config
    after = me.get("/api/me").json()["usage"]
    # That tenant's usage went up: the answer came from this engine, as this user.
    assert after["prefill_tokens"] - before["prefill_tokens"] > 1000      # the system prompt and tool schemas
    assert after["decode_tokens"] > before["decode_tokens"]


def test_ai_magic_answers_through_potluck_by_default(ai_engine, tmp_path):
    me = ai_engine.client("ai-magic-user")
    before = me.get("/api/me").json()["usage"]
    out = run_ai(MAGIC, "Say hi.", ai_env(ai_engine, tmp_path, "ai-magic-user"), tmp_path)
    assert out["answer"].strip() and not out["answer"].startswith("Error"), out
    after = me.get("/api/me").json()["usage"]
    assert after["decode_tokens"] > before["decode_tokens"]


def test_ai_magic_leaves_a_users_own_openai_endpoint_alone(ai_engine, tmp_path):
    # A user who set their own OpenAI endpoint and key: the preset never points %%ai at Potluck,
    # so that key is never sent to the engine, and says so in one line.
    env = {**ai_env(ai_engine, tmp_path, "ai-magic-user"), "OPENAI_BASE_URL": "https://api.openai.com/v1",
           "OPENAI_API_KEY": "sk-the-users-own"}
    out = run_ai(MAGIC, "Say hi.", env, tmp_path)
    assert "OPENAI_BASE_URL is not the engine's /v1" in out["error"], out
