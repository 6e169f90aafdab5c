"""The host side of the ``potluck:inferlet`` world: each import declared once, and what it does for one run.

``RunImports`` implements every import of ``wit/inferlet.wit`` for one run,
through the engine port (``port.py``) and the run's own tables, always as the
run's owner. Each import is one method marked ``@host_call("iface.name",
shape)``; ``VERBS`` is built from those marks, and at import this module
checks it against the ``.wit`` file: every function the world imports has
exactly one host call and no host call names anything else, and a call is
``PLAIN`` exactly where its WIT function returns no ``result``. Adding a host
call is: the WIT line, then one decorated method here. (``wasm.py`` wires
``VERBS`` into the linker and checks the ``RESULT``/``TAGGED`` split against
the compiled component.)

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
- reach the engine other than through the run's ``EnginePort``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from wasmtime.component import Record, Variant

from ..constraints import Structured
from ..errors import PotluckError
from ..protocol import CANCELLED
from ..sampling import Sampler

if TYPE_CHECKING:
    from .port import EnginePort
    from .run import Run
    from .topics import Topics

log = logging.getLogger("potluck.sandbox")

WIT_FILE = Path(__file__).resolve().parent / "wit" / "inferlet.wit"

MAX_HANDLES = 256            # live contexts one run may hold
MAX_SAMPLERS = 4096          # distinct samplers one run may register
MAX_MESSAGE_BYTES = 64 * 1024
MAX_KEY = 256
RECEIVE_BATCH = 64

# How an import's outcome is lowered. wasmtime-py lowers a WIT `result` as a
# tagged Variant when its ok and err payloads could be confused (both
# strings), and as the bare value otherwise. PLAIN functions have no result<>
# at all: on failure they return their fallback.
PLAIN, RESULT, TAGGED = "plain", "result", "tagged"

MAX_ENCODE_CHARS = 1 << 20   # text one encode call tokenizes (host time the run pays for, in one piece)

# Imports that wait for the batch loop (the model, the fair scheduler serving others, its page
# pool): their time is given back to the run's max_run_seconds. Everything else a host call does
# for the run (tokenizing, the key-value store, saving contexts, messages, sleeping) is the run's
# own time: a run limited to 5 s could otherwise tokenize for 18 s and slow everyone else.
MODEL_WAIT = {"fill", "forward", "forward_all", "create", "open", "fork", "drop", "truncate", "tokens"}


class Refused(Exception):
    """An import refused: the message goes back to the guest as the result's err."""


def strict_json(body: str, what: str):
    """Parse JSON text as the strict standard says (no NaN or Infinity); Refused naming the problem."""
    def no_constant(name):
        raise ValueError(f"{name} is not JSON")
    try:
        return json.loads(body, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise Refused(f"{what} must be one JSON value: {' '.join(str(e).split())[:200]}") from None


@dataclass(frozen=True)
class Verb:
    """One host call: its WIT interface and function, the ``RunImports`` method, how its outcome is lowered."""

    iface: str
    name: str
    method: str
    shape: str
    fallback: Callable[[], Any] | None = None      # what a PLAIN call returns when it fails


def host_call(wit_name: str, shape: str = RESULT, *, fallback: Callable[[], Any] | None = None):
    """Mark a ``RunImports`` method as the host side of the WIT function ``wit_name`` ("iface.function")."""
    if shape not in (PLAIN, RESULT, TAGGED):
        raise ValueError(f"unknown shape {shape!r}")
    if (shape == PLAIN) != (fallback is not None):
        raise ValueError(f"{wit_name}: a PLAIN host call needs a fallback, and only a PLAIN one")
    iface, name = wit_name.split(".")

    def mark(fn):
        fn.host_call = (iface, name, shape, fallback)
        return fn
    return mark


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


def _no_model_info() -> Record:
    return _record(name="", vocab_size=0, max_context=0, eos_tokens=[])


class RunImports:
    """The world's imports for one run. Every method runs on the run's own thread."""

    def __init__(self, run: "Run", port: "EnginePort", topics: "Topics"):
        self.run = run
        self.port = port
        self.topics = topics
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
            self.port.drop_context(self.tenant, ctx_id)
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
                    raise Refused(run.kill(CANCELLED, "cancelled by its owner")) from None

    def cleanup(self) -> None:
        """Drop every context the run still holds (saved ones live on as snapshots)."""
        for fut in self.in_flight:
            try:
                fut.result(timeout=120)
            except Exception:
                pass
        for ctx_id in list(self.handles.values()):
            try:
                self.port.drop_context(self.tenant, ctx_id)
            except PotluckError:
                pass
            except Exception:
                log.exception("dropping a run's context failed")
        self.handles.clear()

    # --------------------------------------------------------------- model
    @host_call("model.info", PLAIN, fallback=_no_model_info)
    def model_info(self):
        info = self.port.model_info()
        return _record(name=info["name"], vocab_size=info["vocab_size"], max_context=info["max_context"],
                       eos_tokens=list(info["eos_tokens"]))

    @host_call("model.encode", PLAIN, fallback=list)
    def encode(self, text: str) -> list[int]:
        if len(text) > MAX_ENCODE_CHARS:
            raise Refused(f"encode takes at most {MAX_ENCODE_CHARS} characters at a time")
        return self.port.encode(text)

    @host_call("model.decode", PLAIN, fallback=str)
    def decode(self, tokens: list[int]) -> str:
        return self.port.decode(tokens)

    @host_call("model.encode-chat")
    def encode_chat(self, messages_json: str) -> list[int]:
        if len(messages_json) > MAX_ENCODE_CHARS:
            raise Refused(f"encode-chat takes at most {MAX_ENCODE_CHARS} characters of messages at a time")
        try:
            messages = json.loads(messages_json)
        except (ValueError, RecursionError):
            raise Refused("messages must be a JSON list of {role, content} objects") from None
        return self.port.encode_chat(messages)

    # ------------------------------------------------------------- context
    @host_call("context.create")
    def create(self) -> int:
        return self._add(self.port.create_context(self.tenant))

    @host_call("context.open")
    def open(self, name: str) -> int:
        return self._add(self.port.open_context(self.tenant, name))

    @host_call("context.fork")
    def fork(self, handle: int) -> int:
        return self._add(self.port.fork_context(self.tenant, self._ctx(handle)))

    @host_call("context.drop")
    def drop(self, handle: int) -> None:
        self.port.drop_context(self.tenant, self._ctx(handle))
        del self.handles[handle]

    @host_call("context.save")
    def save(self, handle: int, name: str) -> None:
        self.port.save_context(self.tenant, self._ctx(handle), name)

    @host_call("context.delete-saved")
    def delete_saved(self, name: str) -> None:
        self.port.delete_saved(self.tenant, name)

    @host_call("context.list-saved")
    def list_saved(self) -> list[str]:
        return [row["name"] for row in self.port.list_saved(self.tenant)]

    @host_call("context.truncate")
    def truncate(self, handle: int, length: int) -> None:
        self.port.truncate_context(self.tenant, self._ctx(handle), length)

    @host_call("context.tokens")
    def tokens(self, handle: int) -> list[int]:
        return self.port.context_tokens(self.tenant, self._ctx(handle))

    @host_call("context.register-sampler")
    def register_sampler(self, spec) -> int:
        smp = _sampler(spec).validate(self.port.vocab_size)
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

    @host_call("context.constrain")
    def constrain(self, handle: int, spec_json: str) -> None:   # not MODEL_WAIT: compiling is the run's time
        spec = None
        if spec_json:
            if len(spec_json) > MAX_MESSAGE_BYTES:
                raise Refused(f"constrain: the spec is {len(spec_json)} bytes; the limit is {MAX_MESSAGE_BYTES}")
            spec = Structured.of(strict_json(spec_json, "constrain's spec"), where="constrain")
        self.port.constrain_context(self.tenant, self._ctx(handle), spec)

    @host_call("context.fill")
    def fill(self, handle: int, tokens: list[int]) -> None:
        fut = self.port.forward(self.tenant, self._ctx(handle), tokens, None)
        self._wait_engine(fut)
        self.run.count_tokens(prefill=len(tokens), decode=0)

    @host_call("context.forward")
    def forward(self, handle: int, tokens: list[int], sampler: int) -> Record:
        fut = self.port.forward(self.tenant, self._ctx(handle), tokens, self._smp(sampler))
        s = self._wait_engine(fut)
        self.run.count_tokens(prefill=0 if len(tokens) == 1 else len(tokens), decode=1)
        return _sample(s)

    @host_call("context.forward-all")
    def forward_all(self, calls: list) -> list[Record]:
        if len(calls) > MAX_HANDLES:
            raise Refused(f"forward-all takes at most {MAX_HANDLES} calls")
        batch = [(self._ctx(getattr(c, "ctx")), list(getattr(c, "tokens")), self._smp(getattr(c, "sampler")))
                 for c in calls]
        futs = self.port.forward_many(self.tenant, batch) if batch else []
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
    @host_call("io.args", PLAIN, fallback=lambda: "{}")
    def args(self) -> str:
        return self.run.args_json

    @host_call("io.emit")
    def emit(self, text: str, stderr: bool) -> None:
        self.run.output(text, "stderr" if stderr else "stdout")

    @host_call("io.send")
    def send(self, body: str) -> None:
        if len(body) > MAX_MESSAGE_BYTES:
            raise Refused(f"a message is at most {MAX_MESSAGE_BYTES} bytes of JSON")
        self.run.message_out(body)

    @host_call("io.receive")
    def receive(self, timeout_ms: int) -> list:
        return [_record(topic=topic, body=body) for topic, body in self.run.receive(timeout_ms / 1000.0, RECEIVE_BATCH)]

    @host_call("io.publish")
    def publish(self, topic: str, body: str) -> None:
        if len(body) > MAX_MESSAGE_BYTES:
            raise Refused(f"a message is at most {MAX_MESSAGE_BYTES} bytes of JSON")
        strict_json(body, "a message")      # subscribers parse it: refuse here what they could not
        self.topics.publish(self.run, topic, body)

    @host_call("io.subscribe")
    def subscribe(self, topic: str) -> None:
        self.topics.subscribe(self.run, topic)

    # ------------------------------------------------------------------ kv
    def _kv(self) -> "EnginePort":
        if not self.port.has_kv_store:
            raise Refused("this engine has no key-value store configured")
        return self.port

    @staticmethod
    def _key(key: str) -> str:
        if not key or len(key) > MAX_KEY or "\x00" in key:
            raise Refused(f"a key is 1 to {MAX_KEY} characters, without NUL")
        return key

    @host_call("kv.get", TAGGED)
    def kv_get(self, key: str):
        value = self._kv().kv_get(self.tenant, self._key(key))
        return None if value is None else value.decode("utf-8", errors="replace")

    @host_call("kv.put")
    def kv_put(self, key: str, value: str) -> None:
        try:
            self._kv().kv_put(self.tenant, self._key(key), value.encode("utf-8"))
        except ValueError as e:
            raise Refused(str(e)) from None

    @host_call("kv.delete")
    def kv_delete(self, key: str) -> bool:
        return self._kv().kv_delete(self.tenant, self._key(key))

    @host_call("kv.keys")
    def kv_keys(self, prefix: str) -> list[str]:
        if len(prefix) > MAX_KEY or "\x00" in prefix:
            raise Refused(f"a key prefix is at most {MAX_KEY} characters, without NUL")
        return self._kv().kv_keys(self.tenant, prefix)

    # ------------------------------------------------------------- runtime
    @host_call("runtime.clock", PLAIN, fallback=float)
    def clock(self) -> float:
        return time.monotonic() - self.run.started_monotonic

    @host_call("runtime.random", PLAIN, fallback=int)
    def random(self) -> int:
        return struct.unpack("<Q", os.urandom(8))[0]

    @host_call("runtime.sleep")
    def sleep(self, seconds: float) -> None:
        self.run.sleep(seconds)


def call(imports: RunImports | None, verb: Verb, args: tuple) -> Any:
    """Run one import and lower its outcome; never raises.

    Time spent in an import that waits for the batch loop (``MODEL_WAIT``:
    the scheduler serving other tenants, the step in progress) is given back:
    the run's deadline moves by that much, so on a busy engine a run is not
    punished for waiting its turn. Every other import's time is the run's.
    Each import first checks that the run may go on (cancelled, killed, past
    its deadline: refused at once), and shows what the run printed so far.
    """
    t0 = time.monotonic()
    method = verb.method
    try:
        if imports is None:
            raise Refused("no run is active on this thread")
        reason = imports.run.check_alive()
        if reason is not None:
            raise Refused(reason)
        if method != "emit":
            imports.run.flush_output()
        value = getattr(imports, method)(*args)
        return Variant("ok", value) if verb.shape == TAGGED else value
    except (Refused, PotluckError) as e:
        msg = str(e) or type(e).__name__
    except Exception as e:    # a bug on our side: say so, keep the engine alive
        log.exception("inferlet import %s failed", method)
        msg = f"internal error in {method}: {type(e).__name__}"
    finally:
        if imports is not None and method in MODEL_WAIT:
            imports.run.extend_deadline(time.monotonic() - t0)
    if verb.shape == PLAIN:
        return verb.fallback()
    return Variant("err", msg) if verb.shape == TAGGED else msg


# ------------------------------------------------------- the table and the WIT
def read_wit(text: str) -> tuple[str, str, dict[str, dict[str, bool]]]:
    """(package, version, {imported interface: {function: returns a result<>}}) of a WIT world file.

    Enough WIT for this one file: comments, one package line, interfaces of
    records and ``name: func(...) -> type;`` lines, one world of ``import``s.
    """
    text = re.sub(r"//[^\n]*", "", text)
    pkg = re.search(r"\bpackage\s+([\w:-]+)@([\w.]+)\s*;", text)
    if pkg is None:
        raise ValueError("no package line")
    bodies: dict[str, str] = {}
    worlds: list[str] = []
    for m in re.finditer(r"\b(interface|world)\s+([\w-]+)\s*\{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body = text[m.end():i - 1]
        if m.group(1) == "interface":
            bodies[m.group(2)] = body
        else:
            worlds.append(body)
    if len(worlds) != 1:
        raise ValueError(f"expected one world, found {len(worlds)}")
    imported = re.findall(r"\bimport\s+([\w-]+)\s*;", worlds[0])
    funcs = {}
    for iface in imported:
        found = re.findall(r"([\w-]+)\s*:\s*func\s*\([^)]*\)\s*(?:->\s*([^;]+))?;", bodies[iface])
        funcs[iface] = {name: ret.strip().startswith("result<") for name, ret in found}
    return pkg.group(1), pkg.group(2), funcs


def _collect() -> dict[str, dict[str, Verb]]:
    table: dict[str, dict[str, Verb]] = {}
    for method, fn in vars(RunImports).items():
        mark = getattr(fn, "host_call", None)
        if mark is None:
            continue
        iface, name, shape, fallback = mark
        if name in table.get(iface, {}):
            raise RuntimeError(f"two host calls for {iface}.{name}")
        table.setdefault(iface, {})[name] = Verb(iface, name, method, shape, fallback)
    return table


def check_against_wit(table: dict[str, dict[str, Verb]], wit: dict[str, dict[str, bool]]) -> None:
    """The declared host calls and the WIT world's imports agree exactly, or the sandbox does not load."""
    declared = {(i, n) for i, fs in table.items() for n in fs}
    wanted = {(i, n) for i, fs in wit.items() for n in fs}
    problems = [f"{i}.{n}: in the WIT, no host call" for i, n in sorted(wanted - declared)]
    problems += [f"{i}.{n}: a host call the WIT does not import" for i, n in sorted(declared - wanted)]
    for i, n in sorted(declared & wanted):
        if (table[i][n].shape != PLAIN) != wit[i][n]:
            problems.append(f"{i}.{n}: PLAIN in one and a result<> in the other")
    if problems:
        raise RuntimeError(f"host calls and {WIT_FILE.name} disagree: " + "; ".join(problems))


PACKAGE, VERSION, _WIT_IMPORTS = read_wit(WIT_FILE.read_text())
VERBS: dict[str, dict[str, Verb]] = _collect()
check_against_wit(VERBS, _WIT_IMPORTS)

# The same table as {interface: {function: (method, shape)}}, for reading and tests.
IMPORTS: dict[str, dict[str, tuple[str, str]]] = {
    iface: {name: (v.method, v.shape) for name, v in funcs.items()} for iface, funcs in VERBS.items()}
