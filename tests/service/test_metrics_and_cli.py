"""/metrics for Prometheus, /api/status, and the command line's self-documentation."""

from __future__ import annotations

import re

import requests

from support.engine_process import potluck


def sample(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in metrics")


def test_metrics_count_tokens_per_tenant_and_show_the_pool(engine_proc):
    leo = engine_proc.client("leo")
    r = leo.post("/api/generate", json={"prompt": "Count to three:", "max_tokens": 4, "ignore_eos": True})
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    text = engine_proc.client("root", admin=True).get("/metrics").text
    assert sample(text, "potluck_tokens_total", tenant="leo", kind="decode") == 4
    assert sample(text, "potluck_tokens_total", tenant="leo", kind="prefill") == prompt_tokens
    assert sample(text, "potluck_kv_pages_total") == engine_proc.status()["kv"]["total_pages"]
    assert sample(text, "potluck_kv_pages_used") + sample(text, "potluck_kv_pages_free") == \
        sample(text, "potluck_kv_pages_total")
    for name in ("potluck_queue_depth", "potluck_step_seconds_count", "potluck_batch_sequences_count",
                 "potluck_batch_tokens_count", "potluck_running_generations"):
        assert sample(text, name) >= 0
    assert sample(text, "potluck_generations_total", tenant="leo", finish_reason="length") >= 1
    assert sample(text, "potluck_http_requests_total", handler="GenerateHandler", method="POST", status="200") >= 1


def test_metrics_need_an_admin_token(engine_proc):
    assert requests.get(engine_proc.url + "/metrics", timeout=30).status_code == 401


def test_status_is_public_and_describes_the_engine(engine_proc):
    s = requests.get(engine_proc.url + "/api/status", timeout=30).json()
    assert s["model"] == "SmolLM2-135M-Instruct"
    assert s["kv"]["total_pages"] == 256 and s["kv"]["page_size"] == s["profile"]["page_size"]
    assert {"device", "profile", "queue_depth", "active_tenants", "version", "max_context_tokens"} <= set(s)
    # At the default the profile follows the CPU: bfloat16 where it has bfloat16 arithmetic, else float32.
    bf16 = s["device"]["native_bf16"]
    assert (s["profile"]["name"], s["profile"]["dtype"]) == (("cpu-bf16", "bfloat16") if bf16 else ("cpu", "float32"))


def test_help_all_documents_every_setting():
    out = potluck("engine", "--help-all").stdout
    for trait in ("PotluckEngine.ip", "PotluckEngine.port", "PotluckEngine.model", "PotluckApp.db_url",
                  "PotluckApp.data_dir", "PotluckEngine.default_quota", "PotluckEngine.kv_pages",
                  "PotluckEngine.page_size", "PotluckEngine.scheduler", "PotluckEngine.profile_overrides",
                  "PotluckEngine.authenticator_class", "PotluckEngine.max_body_size"):
        assert f"--{trait}" in out, trait


def test_generate_config_writes_a_commented_file_that_loads(tmp_path):
    cfg = tmp_path / "potluck_config.py"
    potluck("engine", "--generate-config", f"--config={cfg}")
    text = cfg.read_text()
    assert re.search(r"^# c\.PotluckEngine\.port = ", text, re.M)
    assert "#  Default: " in text or "Default:" in text
    # A config file's values reach the command (the CLI wins over it).
    cfg.write_text("c.PotluckApp.data_dir = %r\n" % str(tmp_path / "from-config"))
    out = potluck("token", "create", "zed", f"--config={cfg}")
    assert out.stdout.strip().splitlines()[-1]
    assert (tmp_path / "from-config" / "potluck.sqlite").exists()
    assert potluck("engine", "--generate-config", f"--config={cfg}", check=False).returncode == 1   # no overwrite


def test_token_create_prints_the_token_alone_on_the_last_line(tmp_path):
    out = potluck("token", "create", "mia", f"--data-dir={tmp_path}")
    last = out.stdout.splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", last)
    assert potluck("token", "create", "has space", f"--data-dir={tmp_path}", check=False).returncode == 2
