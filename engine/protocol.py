"""What the engine and its clients agree on, named once.

The kernel client, the server extension, ``hub_config`` and the engine all
import these names from here (this module imports nothing, so the light
user-side packages can use it without the engine's dependencies). The lab
extension reads run states from ``GET /api/status`` (``run_states``).
"""

SERVICE_NAME = "potluck"                       # the engine's service name in the Hub
ADMIN_SCOPE = f"custom:{SERVICE_NAME}:admin"   # engine admins who are not hub admins
TIER_SCOPE = f"custom:{SERVICE_NAME}:tier:{{}}"  # one scope per model tier: .format(name)

# An inferlet run's states, in the order a run passes through them.
QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
CANCELLED = "cancelled"
LIVE_STATES = (QUEUED, RUNNING)
DONE_STATES = (FINISHED, FAILED, CANCELLED)
RUN_STATES = LIVE_STATES + DONE_STATES
