"""Fixtures of the deployment tests: one real ``potluck engine`` process (for the router metrics)."""

from __future__ import annotations

import pytest

from support.engine_process import serve


@pytest.fixture(scope="module")
def router_engine(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("potluck-router-metrics"))
