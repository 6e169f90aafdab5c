"""Interrupting a generation in a real kernel: one line, the engine's stream closed, the text so far kept.

A real IPython kernel (``jupyter_client``, the "Python 3 (Potluck)" kernel's ``--ext
potluck.kernel``) talks to a stand-in engine whose ``POST /api/generate`` streams a token every
50 ms until the client hangs up; the test interrupts the kernel as the stop button does.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys
import threading
import time

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

pytestmark = pytest.mark.timeout(120)


class SlowEngine:
    def __init__(self):
        self.hung_up = threading.Event()
        me = self

        class Generate(web.RequestHandler):
            async def post(self):
                self.set_header("Content-Type", "text/event-stream")
                for i in range(2000):
                    if self.request.connection.stream.closed():
                        break
                    self.write(f"event: token\ndata: {json.dumps({'token': i, 'text': f'w{i} '})}\n\n")
                    try:
                        await self.flush()
                    except Exception:
                        break
                    await asyncio.sleep(0.05)

            def on_connection_close(self):
                me.hung_up.set()

        self.app = web.Application([(r"/api/generate", Generate)])


@pytest.fixture
def engine():
    s = SlowEngine()
    sock, port = bind_unused_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        HTTPServer(s.app).add_sockets([sock])
        ready.set()
        loop.run_forever()
    threading.Thread(target=serve, daemon=True).start()
    ready.wait()
    s.url = f"http://127.0.0.1:{port}/"
    yield s
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture
def kernel(engine, monkeypatch):
    from jupyter_client.manager import start_new_kernel
    monkeypatch.setenv("POTLUCK_URL", engine.url)
    monkeypatch.setenv("POTLUCK_TOKEN", "t")
    km, kc = start_new_kernel(kernel_name="python3", extra_arguments=["--ext", "potluck.kernel"])
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def run_and_interrupt(km, kc, code: str, after_outputs: int = 3) -> tuple[str, str]:
    """Execute ``code``, interrupt the kernel once it has shown a few outputs; (stdout, stderr + errors)."""
    msg_id = kc.execute(code)
    out, err, seen, interrupted = [], [], 0, False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("stream", "display_data", "update_display_data"):
            seen += 1
            if kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
        elif kind == "error":
            err.append("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), "".join(err)
        if seen >= after_outputs and not interrupted:
            km.interrupt_kernel()
            interrupted = True
    raise TimeoutError(code)


def test_interrupting_generate_is_one_line_and_keeps_the_partial_text(kernel, engine):
    km, kc = kernel
    code = ("import sys\n"
            "for piece in potluck.stream('Once upon a time', max_tokens=2000):\n"
            "    print(piece, end='', flush=True)\n")
    # A plain stream first: interrupting a user's own loop stops it too (a KeyboardInterrupt).
    run_and_interrupt(km, kc, code)
    assert engine.hung_up.wait(10), "the engine's stream was not closed"
    engine.hung_up.clear()
    out, err = run_and_interrupt(km, kc, "r = potluck.generate('Once upon a time', max_tokens=2000)\n", after_outputs=1)
    assert engine.hung_up.wait(10), "the engine's stream was not closed"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("potluck: interrupted after ") and "potluck.partial" in lines[0], err
    assert "Traceback" not in err and "urllib3" not in err
    out, err = run_and_interrupt(km, kc, "print(repr(potluck.partial[:6]), potluck.partial.finish_reason,"
                                         " potluck.partial.tokens[:2])\n", after_outputs=99)
    assert out.strip() == "'w0 w1 ' interrupted [0, 1]", (out, err)


def test_interrupting_the_generate_magic_is_one_line(kernel, engine):
    km, kc = kernel
    out, err = run_and_interrupt(km, kc, "%%generate -n 2000\nOnce upon a time")
    assert engine.hung_up.wait(10)
    assert "w0 w1" in out
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("potluck: interrupted after "), err
