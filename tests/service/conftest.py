"""Fixtures of the service tests: one real ``potluck engine`` process for the session."""

from __future__ import annotations

import pytest

from support.engine_process import serve


@pytest.fixture(scope="session")
def engine_proc(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("potluck-data"))
