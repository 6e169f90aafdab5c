"""Constrained decoding: a grammar per sequence, applied as one token mask inside the step.

A request may ask that its output follow a JSON schema (or be any JSON object), a regular
expression, one of a list of strings, or a Lark / GBNF grammar. ``ConstraintCompiler.compile``
turns that ``Structured`` spec into a ``Constraint`` at the door, on the request's thread (a
grammar that does not compile is a one-line 400 there, never a failure inside a step). The
batch loop carries each sequence's ``Constraint`` into the step; ``allowed_mask`` asks all of
the step's matchers for their next-token bitmasks in one call (llguidance computes them in
parallel, ~40 us a sequence on a CPU) and unpacks them to one boolean tensor that the sampler
applies to every row at once. After sampling, the sequence's matcher consumes its token.

llguidance was picked over xgrammar and outlines-core because it computes masks lazily per
step without a per-schema precompilation pass (a new schema costs nothing until it is used),
its Earley parser takes JSON schema, regex, choice, Lark and GBNF alike, and its parser limits
bound the work one hostile grammar can add to a step that other tenants share.

What it must never do: loop in Python over the vocabulary, or decide order or quotas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import llguidance
import llguidance.torch
import torch

from .errors import BadRequest

MAX_GRAMMAR_CHARS = 64 * 1024      # a schema / regex / grammar as sent, serialised
MAX_CHOICES = 1024
KINDS = ("json", "json_object", "regex", "choice", "grammar")
_BITS = torch.arange(32, dtype=torch.int32)
# JSON as people write it, with no freedom in whitespace: a model that may put any whitespace
# anywhere can fill max_tokens with newlines and never close the object.
_JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


@dataclass(frozen=True)
class Structured:
    """What the output must match: exactly one kind and its value."""
    kind: str        # one of KINDS
    value: object    # a schema (dict), a regex / grammar (str), a list of strings, or None (json_object)
    source: str = "structured output"     # the request field it came from, named in errors

    @staticmethod
    def of(fields: dict, *, where: str) -> "Structured | None":
        """The vLLM-style ``structured_outputs`` object (``json``, ``regex``, ``choice``, ``grammar``,
        ``json_object``): at most one of them."""
        if not isinstance(fields, dict):
            raise _bad(f"{where} must be an object with one of {', '.join(KINDS)}", where)
        unknown = sorted(set(fields) - set(KINDS) - {"disable_fallback", "disable_any_whitespace",
                                                      "disable_additional_properties", "whitespace_pattern"})
        if unknown:
            raise _bad(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(KINDS)}", where)
        given = [k for k in KINDS if fields.get(k) not in (None, False)]
        if len(given) > 1:
            raise _bad(f"{where}: give one of {', '.join(KINDS)}, not {' and '.join(given)}", where)
        if not given:
            return None
        kind = given[0]
        value = fields[kind]
        if kind == "json" and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise _bad(f"{where}.json is not valid JSON: {e}", where) from None
        return Structured(kind, None if kind == "json_object" else value, where)


def closed_objects(schema):
    """``schema`` with every object that lists its properties closed to others (``additionalProperties``
    false where it is not given): OpenAI's strict mode, and what a function's arguments mean. Left open,
    a small model keeps inventing properties until ``max_tokens`` cuts the JSON."""
    if isinstance(schema, list):
        return [closed_objects(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            out[key] = {k: closed_objects(v) for k, v in value.items()} if isinstance(value, dict) else value
        elif key in ("items", "additionalItems", "not", "if", "then", "else", "contains",
                     "anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = closed_objects(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _bad(message: str, param: str | None = None) -> BadRequest:
    return BadRequest(message, code="invalid_structured_output", param=param)


class Constraint:
    """One sequence's grammar state: which tokens may come next, advanced token by token."""

    def __init__(self, matcher: llguidance.LLMatcher):
        self.matcher = matcher

    def copy(self) -> "Constraint":
        """The same grammar at the same point, for another choice of the same prompt."""
        return Constraint(self.matcher.deep_copy())

    def consume(self, token: int) -> bool:
        """Advance past ``token``; False if the grammar refused it (the matcher is then in error)."""
        return self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """The grammar is complete and nothing may follow: the generation can end here."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> str:
        return self.matcher.get_error()


class ConstraintCompiler:
    """Compiles ``Structured`` specs against the served model's tokenizer (built once, on first use)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        import llguidance.hf
        # Built at engine start (~0.3 s on a CPU), so no user's first structured request pays it;
        # compiling a schema after that takes well under a millisecond.
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids))
        self._executor = llguidance.LLExecutor()

    def grammar(self, spec: Structured, *, where: str) -> str:
        """The llguidance grammar for ``spec``; a spec that cannot be one is a one-line 400."""
        kind, value = spec.kind, spec.value
        try:
            size = len(value) if isinstance(value, str) else len(json.dumps(value))
        except (TypeError, ValueError):
            raise _bad(f"{where}: the {kind} value is not JSON", where) from None
        if size > MAX_GRAMMAR_CHARS:
            raise _bad(f"{where}: the {kind} value is {size} characters; the limit is {MAX_GRAMMAR_CHARS}", where)
        try:
            if kind == "json_object":
                return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_STYLE)
            if kind == "json":
                if not isinstance(value, (dict, bool)):
                    raise _bad(f"{where}: a JSON schema must be an object, got {type(value).__name__}", where)
                return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=_JSON_STYLE)
            if kind == "regex":
                if not isinstance(value, str) or not value:
                    raise _bad(f"{where}: regex must be a non-empty string", where)
                return llguidance.LLMatcher.grammar_from_regex(value)
            if kind == "choice":
                if (not isinstance(value, list) or not value or len(value) > MAX_CHOICES
                        or not all(isinstance(c, str) and c for c in value)):
                    raise _bad(f"{where}: choice must be 1 to {MAX_CHOICES} non-empty strings", where)
                return llguidance.grammar_from("choice", json.dumps(value))
            if kind == "grammar":
                if not isinstance(value, str) or not value.strip():
                    raise _bad(f"{where}: grammar must be a non-empty Lark or GBNF grammar", where)
                return llguidance.grammar_from("grammar", value)
        except (ValueError, TypeError, RuntimeError) as e:
            raise _bad(f"{where}: the {kind} cannot be used: {_first_line(e)}", where) from None
        raise _bad(f"{where}: unknown kind {kind!r}", where)

    def compile(self, spec: Structured, *, where: str | None = None) -> Constraint:
        where = where or spec.source
        grammar = self.grammar(spec, where=where)
        err = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if err:
            raise _bad(f"{where}: the {spec.kind} cannot be used: {_first_line(err)}", where)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise _bad(f"{where}: the {spec.kind} cannot be used: {_first_line(matcher.get_error())}", where)
        return Constraint(matcher)

    def allowed_mask(self, constraints: list[Constraint | None], vocab: int,
                     device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The constrained rows (indices into ``constraints``) and, for each, the tokens it may sample
        next (booleans, [rows, vocab]); None when no row is constrained."""
        rows = [i for i, c in enumerate(constraints) if c is not None]
        if not rows:
            return None
        words = (vocab + 31) // 32
        bitmask = torch.full((len(rows), words), -1, dtype=torch.int32)
        llguidance.torch.fill_next_token_bitmask_par(
            self._executor, [(constraints[i].matcher, k) for k, i in enumerate(rows)], bitmask)
        allowed = ((bitmask[:, :, None] >> _BITS) & 1).bool().reshape(len(rows), words * 32)[:, :vocab]
        return torch.tensor(rows, device=device), allowed.to(device)


def _first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
