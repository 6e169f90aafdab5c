"""EnginePort: the only part of the engine the sandbox may call.

Runs execute on their own threads, while every tenant's counters, the KV page
pool and the scheduler belong to the engine's batch-loop thread. So the
sandbox never holds the ``Engine`` itself: ``RunManager`` wraps it in this
port, and runs and their host calls go through these methods and no others.
Each one is an ``Engine`` method that is safe from any thread (it either posts
to the loop or touches nothing the loop owns). Counters the sandbox keeps
(runs per tenant, fuel used) are reported with ``note_active_runs`` and
``charge_fuel``; the loop thread applies them.

What this module must never do: assign an engine ``Tenant``'s attribute, or
reach past the ``Engine``'s public methods (its runner, tokenizer, ledger or
tenant table). Every context and key-value call names a tenant: the run's
owner, chosen by the caller from the run, never by the guest.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..constraints import Structured
    from ..engine import Engine
    from ..sampling import Sampler
    from ..quota import Quota


class EnginePort:
    """The engine as a run sees it: quotas, the model, contexts, forwards, the owner's key-value store.

    ``store`` holds the tenants' key-value store: the service passes the
    engine's own store (the one ``RunManager`` keeps its run history in);
    without one, key-value calls are refused.
    """

    def __init__(self, engine: "Engine", store: Any = None):
        self._engine = engine
        self._store = store

    # ------------------------------------------------------------ tenants
    def quota(self, tenant: str) -> "Quota":
        """The tenant's quota now (an unseen tenant is resolved first)."""
        return self._engine.quota(tenant)

    def note_active_runs(self, tenant: str, n: int) -> None:
        """The tenant now has ``n`` runs queued or running (applied on the loop thread)."""
        self._engine.note_active_runs(tenant, n)

    def charge_fuel(self, tenant: str, fuel: int) -> None:
        """Fuel a run used: counted on the tenant (on the loop thread) and in the usage ledger."""
        self._engine.charge_fuel(tenant, fuel)

    # -------------------------------------------------------------- model
    def model_info(self) -> dict:
        """name, vocab_size, max_context, eos_tokens (sorted)."""
        return self._engine.model_info()

    @property
    def vocab_size(self) -> int:
        return self._engine.vocab_size

    def encode(self, text: str) -> list[int]:
        return self._engine.encode(text)

    def decode(self, tokens: list[int]) -> str:
        return self._engine.decode(tokens)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self._engine.encode_chat(messages)

    # ----------------------------------------------------------- contexts
    def create_context(self, tenant: str) -> int:
        return self._engine.create_context(tenant)

    def open_context(self, tenant: str, name: str) -> int:
        return self._engine.open_context(tenant, name)

    def fork_context(self, tenant: str, ctx_id: int) -> int:
        return self._engine.fork_context(tenant, ctx_id)

    def drop_context(self, tenant: str, ctx_id: int) -> None:
        self._engine.drop_context(tenant, ctx_id)

    def truncate_context(self, tenant: str, ctx_id: int, length: int) -> None:
        self._engine.truncate_context(tenant, ctx_id, length)

    def context_tokens(self, tenant: str, ctx_id: int) -> list[int]:
        return self._engine.context_tokens(tenant, ctx_id)

    def save_context(self, tenant: str, ctx_id: int, name: str) -> None:
        self._engine.save_context(tenant, ctx_id, name)

    def delete_saved(self, tenant: str, name: str) -> None:
        self._engine.delete_saved(tenant, name)

    def list_saved(self, tenant: str) -> list[dict]:
        return self._engine.list_saved(tenant)

    def constrain_context(self, tenant: str, ctx_id: int, structured: "Structured | None") -> None:
        self._engine.constrain_context(tenant, ctx_id, structured)

    def forward(self, tenant: str, ctx_id: int, tokens: list[int], sampler: "Sampler | None") -> Future:
        return self._engine.forward(tenant, ctx_id, tokens, sampler)

    def forward_many(self, tenant: str, calls: list[tuple[int, list[int], "Sampler | None"]]) -> list[Future]:
        return self._engine.forward_many(tenant, calls)

    # ------------------------------------------------ the key-value store
    @property
    def has_kv_store(self) -> bool:
        return self._store is not None

    def kv_get(self, tenant: str, key: str) -> bytes | None:
        return self._store.kv_get(tenant, key)

    def kv_put(self, tenant: str, key: str, value: bytes) -> None:
        """Held to the tenant's ``kv_store_bytes`` (keys and values together)."""
        self._store.kv_put(tenant, key, value, limit=self.quota(tenant).kv_store_bytes)

    def kv_delete(self, tenant: str, key: str) -> bool:
        return self._store.kv_delete(tenant, key)

    def kv_keys(self, tenant: str, prefix: str) -> list[str]:
        return self._store.kv_keys(tenant, prefix)
