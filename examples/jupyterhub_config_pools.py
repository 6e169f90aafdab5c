# Potluck with pools: several engines, users routed by their Hub groups.
#
#   POTLUCK_DB_URL=postgresql+psycopg://potluck@db-host/potluck jupyterhub -f examples/jupyterhub_config_pools.py
#
# Two pools: "gpu" (two engines on GPU hosts, which the Hub only routes to: start each there with
# the settings this file prints) and "cpu" (one engine the Hub starts on its own host). Members of
# the "researchers" group are in the gpu pool (their group's `potluck.pool` property); everybody
# else is in the default pool, cpu. Within a pool each user is pinned to one engine by rendezvous
# hashing, and moves to the other when theirs stops. Every engine shares one PostgreSQL database:
# tokens, quotas, usage, saved contexts. See docs/deploy.md (and deploy/kubernetes/ for
# zero-to-jupyterhub).

import os

import potluck.hub_config

c = get_config()  # noqa: F821 (defined by JupyterHub when it loads this file)

c.JupyterHub.bind_url = os.environ.get("POTLUCK_HUB_URL", "http://127.0.0.1:8000")
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ.get("POTLUCK_DEMO_PASSWORD", "potluck-demo")
c.SharedPasswordAuthenticator.admin_password = os.environ.get(
    "POTLUCK_DEMO_ADMIN_PASSWORD", "potluck-demo-admin-password-change-me")
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"ada"}
c.JupyterHub.spawner_class = "simple"
c.Spawner.default_url = "/lab"

db_url = os.environ.get("POTLUCK_DB_URL")
if not db_url:
    raise SystemExit("set POTLUCK_DB_URL to a PostgreSQL URL all engines share, "
                     "e.g. postgresql+psycopg://potluck@db-host/potluck")

gpu_hosts = os.environ.get("POTLUCK_GPU_ENGINES", "http://gpu-node-1:8765,http://gpu-node-2:8765").split(",")
potluck.hub_config.configure(
    c,
    pools={
        # External: started on the GPU hosts (by systemd, Kubernetes, ...), each with its own service
        # token (api_token here, JUPYTERHUB_API_TOKEN there) and the --PotluckEngine settings printed.
        "gpu": {"engines": [{"url": u, "api_token": os.environ.get(f"POTLUCK_GPU_TOKEN_{i}")}
                            for i, u in enumerate(gpu_hosts)],
                "external": True, "accelerator": "h100"},
        # Managed: the Hub starts it here, as with one engine.
        "cpu": {"engines": [os.environ.get("POTLUCK_ENGINE_URL", "http://127.0.0.1:8766")]},
    },
    default_pool="cpu",
    db_url=db_url,
    data_dir=os.environ.get("POTLUCK_DATA_DIR", os.path.abspath("potluck-data")),
    engine_args=['--PotluckEngine.default_quota={"tokens_per_minute": 20000, "max_tokens_per_request": 1024}'],
    admin_users={"teacher"},
    groups={"researchers": {"pool": "gpu", "weight": 4}, "students": {"tokens_per_minute": 5000}},
)
c.JupyterHub.load_groups["researchers"]["users"] = ["alice"]
c.JupyterHub.load_groups["students"]["users"] = ["bob"]
