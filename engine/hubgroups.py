"""A Hub group's ``potluck`` quota as the Hub really stores it, read fail-closed.

The Hub's admin page (*Admin -> Groups -> Edit group -> properties*) edits a group's properties
as key/value pairs of *strings*, and shows an object value as ``[object Object]``. So a group's
quota is accepted in three forms, merged in this order (later wins, field by field):

- ``potluck`` = a JSON object, ``{"tokens_per_minute": 5000}`` (the Hub API, ``load_groups``);
- ``potluck`` = a string holding that object (what the page stores when one types it there);
- flat keys, one per field: ``potluck.tokens_per_minute`` = ``"5000"`` -- the form to type in
  the page. A string is converted by the field's type in ``quota.Quota``: a whole number, a
  number, ``interactive``/``batch``, a comma-separated model list; ``null`` means no limit.

Fail closed: a value that cannot be read never loosens a limit. ``GroupQuotaBook`` keeps each
group's last good quota (in the store, so it survives a restart) and answers with it while the
Hub's value is unreadable; the error goes to the log (once per distinct error), to
``report()`` (the admin API's ``groups`` and the ``potluck_group_quota_unreadable`` metric).
A group with no readable value yet contributes nothing (its members keep the defaults and
their other groups' values).

``kv_pool_warnings`` names every quota an admin set (default, group, user) whose ``kv_pages``
is above the engine's KV pool: such a limit never binds (the pool does), which admins should know.

What it must never do: talk to the Hub (``auth.HubAuthenticator`` fetches the properties and
hands them here), or resolve a user's quota (``quota.py``).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone

from .errors import BadRequest, PotluckError
from .protocol import SERVICE_NAME
from .quota import QUOTA_FIELDS, validate_quota_fields

PREFIX = f"{SERVICE_NAME}."          # flat keys: potluck.tokens_per_minute
NO_LIMIT = ("null", "none")          # typed for "no limit" (JSON null)

log = logging.getLogger("potluck.engine")


def _kind(name: str) -> str:
    # The field's declared type in Quota ("int | None" -> "int"), as quota.py reads it.
    return str(QUOTA_FIELDS[name].type).split(" |")[0].split("[")[0]


def field_from_text(name: str, value, *, where: str):
    """A flat key's value: a string converted by the quota field's type; other JSON values as they are."""
    if not isinstance(value, str) or name not in QUOTA_FIELDS:
        return value                 # validate_quota_fields names an unknown field or a wrong type
    text = value.strip()
    if text.lower() in NO_LIMIT:
        return None
    kind = _kind(name)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        what = "a whole number" if kind == "int" else "a number"
        raise BadRequest(f"{where}: {name} must be {what} or null (no limit), got {value!r}",
                         code="invalid_quota") from None
    if kind == "tuple":              # models: "a, b" or a JSON list
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise BadRequest(f"{where}: models must be a JSON list or comma-separated names, got {value!r}",
                                 code="invalid_quota") from None
        return [m.strip() for m in text.split(",") if m.strip()]
    return text


def quota_from_properties(props: dict, *, group: str) -> dict | None:
    """The validated quota fields in a group's properties; None if it has none.

    Raises ``BadRequest`` (one line naming the key and what it must be) for an unreadable value.
    """
    if not isinstance(props, dict):
        raise BadRequest(f"group {group!r}: properties are not a JSON object", code="invalid_quota")
    found = SERVICE_NAME in props
    fields: dict = {}
    if found:
        where = f"group {group!r} property {SERVICE_NAME!r}"
        value = props[SERVICE_NAME]
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except ValueError:
                raise BadRequest(f"{where} is not a JSON object ({value[:60]!r}); type one key per field "
                                 f"instead, e.g. {PREFIX}tokens_per_minute = 5000", code="invalid_quota") from None
        fields.update(validate_quota_fields({} if value is None else value, where=where))
    for key in sorted(props):
        if key.startswith(PREFIX):
            found = True
            name = key[len(PREFIX):]
            where = f"group {group!r} property {key!r}"
            fields.update(validate_quota_fields({name: field_from_text(name, props[key], where=where)},
                                                where=where))
    return fields if found else None


def has_quota(props: dict) -> bool:
    """Whether a group's properties hold any Potluck quota value (readable or not)."""
    return isinstance(props, dict) and any(k == SERVICE_NAME or k.startswith(PREFIX) for k in props)


def flat_properties(fields: dict) -> dict[str, str]:
    """Quota fields as the flat, string-valued properties an admin would type in the Hub's page."""
    out = {}
    for name, value in validate_quota_fields(fields, where="group quota").items():
        if value is None:
            text = "null"
        elif isinstance(value, (list, tuple)):
            text = ", ".join(value)
        else:
            text = str(value)
        out[PREFIX + name] = text
    return out


def kv_pool_warnings(pool_pages: int, *, default: dict | None = None, groups: dict[str, dict] | None = None,
                     overrides: dict[str, dict] | None = None) -> list[str]:
    """One line per quota set by an admin whose kv_pages is above the KV pool (it cannot bind)."""
    found = [("the default quota", default or {})]
    found += [(f"group {g!r}", q or {}) for g, q in sorted((groups or {}).items())]
    found += [(f"the override of user {u!r}", q or {}) for u, q in sorted((overrides or {}).items())]
    return [f"{who}: kv_pages {q['kv_pages']} is above the engine's KV pool of {pool_pages} pages; "
            "the pool is the limit" for who, q in found
            if isinstance(q.get("kv_pages"), int) and q["kv_pages"] > pool_pages]


class GroupQuotaBook:
    """Each group's quota in effect: the Hub's value when readable, else its last good one.

    ``accept`` may read or write the store (only on a change or a first unreadable value), so
    call it off the IOLoop; it is thread-safe.
    """

    def __init__(self, store=None) -> None:
        self.store = store
        self.pool_pages: int | None = None                # the engine's KV pool, once it runs
        self._lock = threading.Lock()
        self._good: dict[str, dict | None] = {}           # group -> last good fields (None: never read)
        self._errors: dict[str, tuple[str, str]] = {}     # group -> (message, since ISO time)

    def accept(self, group: str, props: dict) -> dict:
        """The quota in effect for ``group`` given its properties as the Hub has them now."""
        try:
            fields = quota_from_properties(props, group=group) or {}
        except PotluckError as e:
            with self._lock:
                last = self._last_good(group)
                if self._errors.get(group, ("",))[0] != e.message:
                    kept = (f"keeping its last good quota {json.dumps(last)}" if last is not None
                            else "no good value was ever read: it adds nothing to its members' quota")
                    log.error("unreadable quota of group %r, %s: %s", group, kept, e.message)
                    self._errors[group] = (e.message, datetime.now(timezone.utc).isoformat())
            return dict(last or {})
        with self._lock:
            if self._errors.pop(group, None) is not None:
                log.info("the quota of group %r is readable again: %s", group, json.dumps(fields))
            if self._last_good(group) != fields:
                if self.store is not None:
                    self.store.set_group_quota(group, fields)
                self._good[group] = fields
                if self.pool_pages is not None:
                    for line in kv_pool_warnings(self.pool_pages, groups={group: fields}):
                        log.warning("%s", line)
        return dict(fields)

    def last_good(self, group: str) -> dict | None:
        """The group's last good quota (e.g. while the Hub cannot be reached)."""
        with self._lock:
            last = self._last_good(group)
            return dict(last) if last is not None else None

    def _last_good(self, group: str) -> dict | None:
        if group not in self._good:
            self._good[group] = self.store.get_group_quota(group) if self.store is not None else None
        return self._good[group]

    def report(self) -> dict[str, dict]:
        """Every group seen: the quota in effect, while the Hub's value is unreadable why, and warnings."""
        with self._lock:
            out = {}
            for group in sorted(set(self._good) | set(self._errors)):
                message, since = self._errors.get(group, (None, None))
                quota = dict(self._good.get(group) or {})
                warnings = kv_pool_warnings(self.pool_pages, groups={group: quota}) if self.pool_pages else []
                out[group] = {"quota": quota, "error": message, "error_since": since, "warnings": warnings}
            return out
