"""Fixtures of the service tests: one real ``potluck engine`` process for the session."""

from __future__ import annotations

import pytest

from potluck_process import EngineProcess


@pytest.fixture(scope="session")
def engine_proc(tmp_path_factory):
    proc = EngineProcess(tmp_path_factory.mktemp("potluck-data"))
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, f"the engine did not shut down cleanly ({code}):\n{proc.log_tail()}"
