"""A Hub killed with SIGKILL takes its managed engine with it.

The Hub starts a managed engine as its child (``potluck.hub_config`` adds
``--PotluckEngine.exit_with_hub=True``). Killed, the Hub cannot stop it; left running, the engine
would hold the port the restarted Hub's new engine needs (the Hub then restarts that one in a
loop) and serve with the dead Hub's token. Here a stand-in parent process starts the real engine
the way the Hub does (a child in its own session) and is killed: the engine must stop cleanly on
its own, flushing what it owes the database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from support.engine_process import POTLUCK, free_port

pytestmark = pytest.mark.timeout(300)

PARENT = """
import subprocess, sys, time
p = subprocess.Popen(sys.argv[1:], start_new_session=True,
                     stdout=open(sys.argv[-1].split("=", 1)[1] + "/engine.log", "w"), stderr=subprocess.STDOUT)
print(p.pid, flush=True)
time.sleep(3600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent, init, reaps it)
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_a_managed_engine_stops_when_the_hub_that_started_it_is_killed(tmp_path):
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, POTLUCK, "engine", f"--port={port}", "--kv-pages=64",
                               "--PotluckEngine.exit_with_hub=True", f"--data-dir={tmp_path}"],
                              stdout=subprocess.PIPE, text=True)
    engine = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline, (tmp_path / "engine.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60
        while alive(engine):
            assert time.monotonic() < deadline, "the engine outlived its Hub:\n" + (tmp_path / "engine.log").read_text()[-3000:]
            time.sleep(0.5)
        log = (tmp_path / "engine.log").read_text()
        assert "is gone: stopping" in log and "shutting down" in log, log[-3000:]
    finally:
        if alive(engine):
            os.kill(engine, signal.SIGKILL)
