"""The engine's access log: routine polls at debug, everything else as before."""

from __future__ import annotations

from support.engine_process import EngineProcess


def test_routine_polls_are_not_logged_at_info_but_other_requests_and_failures_are(tmp_path):
    proc = EngineProcess(tmp_path)
    proc.start()
    try:
        alice = proc.client("alice")
        for _ in range(5):
            assert alice.get("/api/status").status_code == 200
            assert alice.get("/api/me").status_code == 200
            assert alice.get("/api/runs").status_code == 200
            assert alice.get("/api/contexts").status_code == 200
        assert alice.get("/api/contexts/nope").status_code == 404
        assert proc.client("mallory", admin=False).get("/api/admin/tenants").status_code == 403
    finally:
        assert proc.stop() == 0, proc.log_tail()
    access = [ln for ln in proc.log_path.read_text().splitlines() if "tornado.access" in ln]
    assert not [ln for ln in access if "GET /api/status" in ln or "GET /api/me" in ln or "GET /api/runs" in ln]
    assert any("404 GET /api/contexts/nope" in ln for ln in access), access
    assert any("403 GET /api/admin/tenants" in ln for ln in access), access
