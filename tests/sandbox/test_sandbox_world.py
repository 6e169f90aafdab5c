"""The host's import table matches the runner's WIT world, and the runner is built once and cached."""

from __future__ import annotations

import pytest
from wasmtime.component import FuncType, ResultType

from potluck.engine.sandbox import build
from potluck.engine.sandbox.host_calls import IMPORTS, PACKAGE, PLAIN, RESULT, TAGGED, VERSION
from potluck.engine.sandbox.wasm import Sandbox, describe_trap
from potluck.engine.quota import Quota


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox()


def test_every_import_of_the_world_has_a_host_function_of_the_right_shape(sandbox):
    imports = sandbox.runner.type.imports(sandbox.engine)
    ours = {name: ext for name, ext in imports.items() if name.startswith(PACKAGE)}
    wanted = {f"{PACKAGE}/{iface}@{VERSION}" for iface in IMPORTS} | {f"{PACKAGE}/types@{VERSION}"}
    assert set(ours) == wanted
    for iface, funcs in IMPORTS.items():
        items = ours[f"{PACKAGE}/{iface}@{VERSION}"].ty.exports(sandbox.engine).items()
        exports = {k: v.ty for k, v in items if isinstance(v.ty, FuncType)}
        assert set(exports) == set(funcs), iface
        for name, (_, shape) in funcs.items():
            result = exports[name].result
            if not isinstance(result, ResultType):
                assert shape == PLAIN, name
            else:
                # wasmtime-py lowers a result whose ok and err could be confused as a tagged Variant.
                assert shape == (TAGGED if result._tagged() else RESULT), name


def test_the_runner_is_cached_by_sources_and_versions(sandbox):
    first = build.ensure_runner(sandbox.engine)
    assert first == sandbox.runner_path and first.exists()
    assert build.ensure_runner(sandbox.engine) == first          # no rebuild when nothing changed
    key = build.sources_key()
    assert key == build.sources_key() and build.compiled_key(key) in first.name


def test_traps_become_one_line_for_the_owner():
    q = Quota(fuel_per_run=10, memory_mb_per_run=8)
    assert "fuel_per_run = 10" in describe_trap("error while executing at wasm backtrace:\n all fuel consumed", q)
    assert "stack" in describe_trap("wasm trap: call stack exhausted", q)
    assert "\n" not in describe_trap("something odd\nwith more lines", q)


def test_a_host_call_the_wit_lacks_or_a_wit_function_without_one_stops_the_sandbox_loading():
    from potluck.engine.sandbox.host_calls import VERBS, WIT_FILE, check_against_wit, read_wit
    _, _, wit = read_wit(WIT_FILE.read_text())
    check_against_wit(VERBS, wit)                                  # today's table and WIT agree
    grown = {**wit, "kv": {**wit["kv"], "clear": True}}
    with pytest.raises(RuntimeError, match="kv.clear: in the WIT, no host call"):
        check_against_wit(VERBS, grown)
    shrunk = {**wit, "runtime": {k: v for k, v in wit["runtime"].items() if k != "random"}}
    with pytest.raises(RuntimeError, match="runtime.random: a host call the WIT does not import"):
        check_against_wit(VERBS, shrunk)
    reshaped = {**wit, "model": {**wit["model"], "decode": True}}
    with pytest.raises(RuntimeError, match="model.decode: PLAIN in one and a result<> in the other"):
        check_against_wit(VERBS, reshaped)
