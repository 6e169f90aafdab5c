"""`make demo`: a real local JupyterHub with the Potluck engine as its service.

    python examples/demo/run_hub.py [--port 8000] [--engine-port 8765] [--state-dir .potluck/demo]

It runs ``examples/jupyterhub_config.py`` as it is (shared-password login, the
engine as a managed service, the groups "researchers" (alice) and "students"
(bob) with different quotas, ada a hub admin), plus what a one-machine demo
needs: its state in ``--state-dir``, configurable-http-proxy from the
repository's npm install, servers allowed to run as root when we are root, and
the example notebooks copied into each user's home directory at first start.
Ctrl-C stops the Hub, the engine and every server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EXAMPLE_CONFIG = REPO / "examples" / "jupyterhub_config.py"
NOTEBOOKS = HERE / "notebooks"
USER_PASSWORD = "potluck-demo"
ADMIN_PASSWORD = "potluck-demo-admin-password-change-me"

OVERLAY = '''
import shutil
from pathlib import Path

load_subconfig({example!r})
c.JupyterHub.db_url = "sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{state}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.hub_port = {hub_port}
c.SimpleLocalProcessSpawner.home_dir_template = "{state}/home/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {spawner_args!r}
c.Spawner.default_url = "/lab/tree/01-generate-and-chat.ipynb"
# A modest KV pool: the demo shares the machine (the profile would size it from free memory).
svc = next(s for s in c.JupyterHub.services if s["name"] == "potluck")
svc["command"] += ["--kv-pages=2048"]


def copy_notebooks(spawner):
    home = Path(spawner.home_dir)
    home.mkdir(parents=True, exist_ok=True)
    for nb in sorted(Path({notebooks!r}).glob("*.ipynb")):
        if nb.name == "04-admin.ipynb" and not spawner.user.admin:
            continue
        if not (home / nb.name).exists():
            shutil.copy(nb, home / nb.name)


c.Spawner.pre_spawn_hook = copy_notebooks
'''


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chp() -> str:
    local = REPO / ".npm-tools" / "node_modules" / ".bin" / "configurable-http-proxy"
    found = str(local) if local.exists() else shutil.which("configurable-http-proxy")
    if not found:
        sys.exit("configurable-http-proxy is missing: run `make venv` (it installs it from npm into .npm-tools)")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run a local JupyterHub with the Potluck engine as its service.")
    p.add_argument("--port", type=int, default=8000, help="the Hub's public port (default 8000)")
    p.add_argument("--engine-port", type=int, default=8765, help="the engine's port (default 8765)")
    p.add_argument("--state-dir", default=str(REPO / ".potluck" / "demo"),
                   help="the Hub's database, the engine's data, the users' home directories")
    args = p.parse_args(argv)

    state = Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    for what, port in (("the Hub", args.port), ("the engine", args.engine_port)):
        if not port_free(port):
            sys.exit(f"port {port} for {what} is in use: is a demo already running? (or pass --port/--engine-port)")
    bin_dir = Path(sys.executable).parent
    config = state / "jupyterhub_config.py"
    config.write_text(OVERLAY.format(
        example=str(EXAMPLE_CONFIG), state=state, chp=find_chp(), proxy_api_port=free_port(), hub_port=free_port(),
        singleuser=str(bin_dir / "jupyterhub-singleuser"),
        spawner_args=["--allow-root"] if os.geteuid() == 0 else [], notebooks=str(NOTEBOOKS)))
    url = f"http://127.0.0.1:{args.port}"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "POTLUCK_HUB_URL": url, "POTLUCK_ENGINE_URL": f"http://127.0.0.1:{args.engine_port}",
           "POTLUCK_DATA_DIR": str(state / "potluck-data"),
           "POTLUCK_DEMO_PASSWORD": USER_PASSWORD, "POTLUCK_DEMO_ADMIN_PASSWORD": ADMIN_PASSWORD}
    print(f"""
Potluck demo: a JupyterHub at {url}/ with the shared engine as its service
(the engine loads the model in ~20 s; the first start de-quantizes it once).

  alice  password {USER_PASSWORD!r}   group "researchers" (weight 4, 100000 tokens/min)
  bob    password {USER_PASSWORD!r}   group "students"    (weight 1, 5000 tokens/min, 256 tokens/request)
  ada    password {ADMIN_PASSWORD!r}   hub admin: Admin page -> Groups -> edit the "potluck" property

Each user's JupyterLab opens with example notebooks (kernel "Python 3 (Potluck)").
The engine's API: {url}/services/potluck/api/status . State: {state}. Ctrl-C stops everything.
""", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=state, env=env)
    # A SIGTERM to this launcher stops the Hub properly too (it stops the engine and the servers).
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
