"""The host side of the ``potluck:inferlet`` world: what each import does for one run.

``RunImports`` implements every import of ``wit/inferlet.wit`` for one run,
through the engine's public API and the run's own tables, always as the run's
owner. ``IMPORTS`` maps the WIT names to its methods; ``host.py`` wires them
into the linker.

What this module must never do:

- raise out of an import. wasmtime-py keeps a host exception in one module
  global shared by every thread, so a raise in one run could surface in
  another; every import returns its error as a value (a string, the WIT
  ``result``'s err) and ``call`` catches what slips through.
- hand the guest anything of another tenant, or an engine-wide id. A guest
  only ever sees small handle numbers from its own run's table; engine
  context ids stay on this side, and every engine call names the run's tenant.
- pass bulk float data: samples come back as one token, its log-probability
  and at most ``MAX_TOP_LOGPROBS`` pairs.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from wasmtime.component import Record, Variant

from ..errors import PotluckError
from ..sampling import Sampler

if TYPE_CHECKING:
    from .runs import Run

log = logging.getLogger("potluck.sandbox")

MAX_HANDLES = 256            # live contexts one run may hold
MAX_SAMPLERS = 4096          # distinct samplers one run may register
MAX_MESSAGE_BYTES = 64 * 1024
MAX_KEY = 256
RECEIVE_BATCH = 64


class Refused(Exception):
    """An import refused: the message goes back to the guest as the result's err."""


def _record(**fields) -> Record:
    r = Record()
    for name, value in fields.items():
        setattr(r, name.replace("_", "-"), value)
    return r


def _sample(s) -> Record:
    return _record(token=s.token, logprob=float(s.logprob), top=[(int(t), float(p)) for t, p in (s.top or [])])


def _sampler(rec) -> Sampler:
    g = lambda name: getattr(rec, name)   # noqa: E731 (WIT record fields are kebab-case)
    allowed = g("allowed")
    return Sampler(temperature=float(g("temperature")), top_k=int(g("top-k")), top_p=float(g("top-p")),
                   min_p=float(g("min-p")), seed=g("seed"), logit_bias=dict(g("logit-bias")),
                   allowed=tuple(allowed) if allowed is not None else None,
                   top_logprobs=int(g("top-logprobs")))


class RunImports:
    """The world's imports for one run. Every method runs on the run's own thread."""

    def __init__(self, run: "Run"):
        self.run = run
        self.engine = run.manager.engine
        self.tenant = run.tenant
        self.handles: dict[int, int] = {}     # guest handle -> engine context id
        self._next = 1
        self.in_flight: list[Future] = []     # forwards left behind by a cancel
        self.samplers: list[Sampler] = []     # guest sampler number - 1 -> checked sampler
        self._sampler_ids: dict[Sampler, int] = {}

    # ------------------------------------------------------------- helpers
    def _ctx(self, handle: int) -> int:
        ctx = self.handles.get(handle)
        if ctx is None:
            raise Refused(f"no context {handle} in this run")
        return ctx

    def _add(self, ctx_id: int) -> int:
        if len(self.handles) >= MAX_HANDLES:
            self.engine.drop_context(self.tenant, ctx_id)
            raise Refused(f"this run holds {MAX_HANDLES} contexts, the limit; drop some first")
        h = self._next
        self._next += 1
        self.handles[h] = ctx_id
        return h

    def _wait_engine(self, fut: Future):
        """Block until the fair scheduler has served a forward (a cancel ends the wait)."""
        run = self.run
        while True:
            try:
                return fut.result(timeout=0.25)
            except FutureTimeout:
                if run.cancel_requested:
                    self.in_flight.append(fut)
                    raise Refused(run.kill("cancelled", "cancelled by its owner")) from None

    def cleanup(self) -> None:
        """Drop every context the run still holds (saved ones live on as snapshots)."""
        for fut in self.in_flight:
            try:
                fut.result(timeout=120)
            except Exception:
                pass
        for ctx_id in list(self.handles.values()):
            try:
                self.engine.drop_context(self.tenant, ctx_id)
            except PotluckError:
                pass
            except Exception:
                log.exception("dropping a run's context failed")
        self.handles.clear()

    # --------------------------------------------------------------- model
    def model_info(self):
        e = self.engine
        return _record(name=e.model_name, vocab_size=e.runner.vocab_size, max_context=e.max_context,
                       eos_tokens=sorted(e.eos_ids))

    def encode(self, text: str) -> list[int]:
        return self.engine.encode(text)

    def decode(self, tokens: list[int]) -> str:
        return self.engine.tokenizer.decode(tokens, skip_special_tokens=True)

    def encode_chat(self, messages_json: str) -> list[int]:
        try:
            messages = json.loads(messages_json)
        except ValueError:
            raise Refused("messages must be a JSON list of {role, content} objects") from None
        return self.engine.encode_chat(messages)

    # ------------------------------------------------------------- context
    def create(self) -> int:
        return self._add(self.engine.create_context(self.tenant))

    def open(self, name: str) -> int:
        return self._add(self.engine.open_context(self.tenant, name))

    def fork(self, handle: int) -> int:
        return self._add(self.engine.fork_context(self.tenant, self._ctx(handle)))

    def drop(self, handle: int) -> None:
        self.engine.drop_context(self.tenant, self._ctx(handle))
        del self.handles[handle]

    def save(self, handle: int, name: str) -> None:
        self.engine.save_context(self.tenant, self._ctx(handle), name)

    def delete_saved(self, name: str) -> None:
        self.engine.delete_saved(self.tenant, name)

    def list_saved(self) -> list[str]:
        return [row["name"] for row in self.engine.list_saved(self.tenant)]

    def truncate(self, handle: int, length: int) -> None:
        self.engine.truncate_context(self.tenant, self._ctx(handle), length)

    def tokens(self, handle: int) -> list[int]:
        return self.engine.context_tokens(self.tenant, self._ctx(handle))

    def register_sampler(self, spec) -> int:
        smp = _sampler(spec).validate(self.engine.runner.vocab_size)
        key = (smp, tuple(sorted(smp.logit_bias.items())))
        n = self._sampler_ids.get(key)
        if n is None:
            if len(self.samplers) >= MAX_SAMPLERS:
                raise Refused(f"this run registered {MAX_SAMPLERS} different samplers, the limit")
            self.samplers.append(smp)
            n = self._sampler_ids[key] = len(self.samplers)
        return n

    def _smp(self, n: int) -> Sampler:
        if not 1 <= n <= len(self.samplers):
            raise Refused(f"no sampler {n} in this run")
        return self.samplers[n - 1]

    def fill(self, handle: int, tokens: list[int]) -> None:
        fut = self.engine.forward(self.tenant, self._ctx(handle), tokens, None)
        self._wait_engine(fut)
        self.run.count_tokens(prefill=len(tokens), decode=0)

    def forward(self, handle: int, tokens: list[int], sampler: int) -> Record:
        fut = self.engine.forward(self.tenant, self._ctx(handle), tokens, self._smp(sampler))
        s = self._wait_engine(fut)
        self.run.count_tokens(prefill=0 if len(tokens) == 1 else len(tokens), decode=1)
        return _sample(s)

    def forward_all(self, calls: list) -> list[Record]:
        if len(calls) > MAX_HANDLES:
            raise Refused(f"forward-all takes at most {MAX_HANDLES} calls")
        batch = [(self._ctx(getattr(c, "ctx")), list(getattr(c, "tokens")), self._smp(getattr(c, "sampler")))
                 for c in calls]
        futs = self.engine.forward_many(self.tenant, batch) if batch else []
        out, error = [], None
        for i, (fut, (_, tokens, _)) in enumerate(zip(futs, batch)):
            try:
                s = self._wait_engine(fut)
            except (Refused, PotluckError) as e:
                error = error or f"call {i}: {e}"
                continue
            self.run.count_tokens(prefill=0 if len(tokens) == 1 else len(tokens), decode=1)
            out.append(_sample(s))
        if error is not None:
            raise Refused(error)
        return out

    # ------------------------------------------------------------------ io
    def args(self) -> str:
        return self.run.args_json

    def emit(self, text: str, stderr: bool) -> None:
        self.run.output(text, "stderr" if stderr else "stdout")

    def send(self, body: str) -> None:
        if len(body) > MAX_MESSAGE_BYTES:
            raise Refused(f"a message is at most {MAX_MESSAGE_BYTES} bytes of JSON")
        self.run.message_out(body)

    def receive(self, timeout_ms: int) -> list:
        return [_record(topic=topic, body=body) for topic, body in self.run.receive(timeout_ms / 1000.0, RECEIVE_BATCH)]

    def publish(self, topic: str, body: str) -> None:
        if len(body) > MAX_MESSAGE_BYTES:
            raise Refused(f"a message is at most {MAX_MESSAGE_BYTES} bytes of JSON")
        self.run.manager.topics.publish(self.run, topic, body)

    def subscribe(self, topic: str) -> None:
        self.run.manager.topics.subscribe(self.run, topic)

    # ------------------------------------------------------------------ kv
    def _store(self):
        store = self.run.manager.store
        if store is None:
            raise Refused("this engine has no key-value store configured")
        return store

    @staticmethod
    def _key(key: str) -> str:
        if not key or len(key) > MAX_KEY:
            raise Refused(f"a key is 1 to {MAX_KEY} characters")
        return key

    def kv_get(self, key: str):
        value = self._store().kv_get(self.tenant, self._key(key))
        return None if value is None else value.decode("utf-8", errors="replace")

    def kv_put(self, key: str, value: str) -> None:
        try:
            self._store().kv_put(self.tenant, self._key(key), value.encode("utf-8"))
        except ValueError as e:
            raise Refused(str(e)) from None

    def kv_delete(self, key: str) -> bool:
        return self._store().kv_delete(self.tenant, self._key(key))

    def kv_keys(self, prefix: str) -> list[str]:
        return self._store().kv_keys(self.tenant, prefix)

    # ------------------------------------------------------------- runtime
    def clock(self) -> float:
        return time.monotonic() - self.run.started_monotonic

    def random(self) -> int:
        return struct.unpack("<Q", os.urandom(8))[0]

    def sleep(self, seconds: float) -> None:
        self.run.sleep(seconds)


# WIT interface -> {function: (RunImports method, result shape)}. The shape
# says how an error travels back: wasmtime-py lowers a `result` as a tagged
# Variant when its ok and err payloads could be confused (both strings), and
# as the bare value otherwise. "plain" functions have no result<> at all.
PLAIN, RESULT, TAGGED = "plain", "result", "tagged"
PACKAGE = "potluck:inferlet"
VERSION = "0.1.0"
IMPORTS: dict[str, dict[str, tuple[str, str]]] = {
    "model": {"info": ("model_info", PLAIN), "encode": ("encode", PLAIN), "decode": ("decode", PLAIN),
              "encode-chat": ("encode_chat", RESULT)},
    "context": {"create": ("create", RESULT), "open": ("open", RESULT), "fork": ("fork", RESULT),
                "drop": ("drop", RESULT), "save": ("save", RESULT), "delete-saved": ("delete_saved", RESULT),
                "list-saved": ("list_saved", RESULT), "truncate": ("truncate", RESULT),
                "tokens": ("tokens", RESULT), "fill": ("fill", RESULT), "register-sampler": ("register_sampler", RESULT),
                "forward": ("forward", RESULT),
                "forward-all": ("forward_all", RESULT)},
    "io": {"args": ("args", PLAIN), "emit": ("emit", RESULT), "send": ("send", RESULT),
           "receive": ("receive", RESULT), "publish": ("publish", RESULT), "subscribe": ("subscribe", RESULT)},
    "kv": {"get": ("kv_get", TAGGED), "put": ("kv_put", RESULT), "delete": ("kv_delete", RESULT),
           "keys": ("kv_keys", RESULT)},
    "runtime": {"clock": ("clock", PLAIN), "random": ("random", PLAIN), "sleep": ("sleep", RESULT)},
}

# What a PLAIN import returns if it fails anyway (it must return something of its type).
_PLAIN_FALLBACK: dict[str, Any] = {"encode": [], "decode": "", "args": "{}", "clock": 0.0, "random": 0}


# Imports whose waiting is the run's own choice: their time counts against max_run_seconds.
RUN_TIME = {"receive", "sleep"}


def call(imports: RunImports | None, method: str, shape: str, args: tuple) -> Any:
    """Run one import and lower its outcome; never raises.

    Time spent in any other import is the engine's (the scheduler serving
    other tenants, the loop between steps, the tokenizer), so the run's
    deadline moves by that much: on a busy engine a run is not punished for
    waiting its turn.
    """
    t0 = time.monotonic()
    try:
        if imports is None:
            raise Refused("no run is active on this thread")
        value = getattr(imports, method)(*args)
        return Variant("ok", value) if shape == TAGGED else value
    except (Refused, PotluckError) as e:
        msg = str(e) or type(e).__name__
    except Exception as e:    # a bug on our side: say so, keep the engine alive
        log.exception("inferlet import %s failed", method)
        msg = f"internal error in {method}: {type(e).__name__}"
    finally:
        if imports is not None and method not in RUN_TIME:
            imports.run.extend_deadline(time.monotonic() - t0)
    if shape == PLAIN:
        if method == "model_info":
            return _record(name="", vocab_size=0, max_context=0, eos_tokens=[])
        return _PLAIN_FALLBACK.get(method)
    return Variant("err", msg) if shape == TAGGED else msg
