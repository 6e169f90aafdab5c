"""Bad input gets a clear 4xx JSON error naming the problem, and the engine keeps serving."""

from __future__ import annotations

import socket

import pytest
import requests

from support.engine_process import MAX_BODY, Client, error_of

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": "default", "prompt": "hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def ivan(engine_proc) -> Client:
    return engine_proc.client("ivan")


def post_raw(client: Client, path: str, data: bytes) -> requests.Response:
    return client.post(path, data=data, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("body, status, code", [
    (b'{"prompt": "hi", ', 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b'{"prompt": "hi", "temperature": NaN}', 400, "invalid_json"),
    (b"[" * 100_000, 400, "invalid_json"),
    (b'{"prompt": "caf\xe9"}', 400, "invalid_utf8"),
    (b'{"prompt": "\\ud800 lone surrogate"}', 400, "invalid_utf8"),
], ids=["truncated", "array", "empty", "nan", "deep-nesting", "latin1-bytes", "lone-surrogate"])
def test_malformed_bodies(ivan, body, status, code):
    r = post_raw(ivan, "/api/generate", body)
    assert r.status_code == status and error_of(r)["code"] == code


@pytest.mark.parametrize("body, status, code, param", [
    ({"prompt": "hi", "max_tokens": "8"}, 400, "invalid_type", "max_tokens"),
    ({"prompt": "hi", "max_tokens": 2.5}, 400, "invalid_type", "max_tokens"),
    ({"prompt": "hi", "stream": "yes"}, 400, "invalid_type", "stream"),
    ({"prompt": ["hi"]}, 400, "invalid_type", "prompt"),
    ({"prompt": "hi", "temprature": 0.5}, 400, "unknown_parameter", "temprature"),
    ({"prompt": "hi", "model": "gpt-4o"}, 404, "model_not_found", "model"),
    ({"prompt": "hi", "logit_bias": {"abc": 1}}, 400, "invalid_sampling", "logit_bias"),
], ids=["max_tokens-string", "max_tokens-float", "stream-string", "prompt-list", "typo", "unknown-model",
        "logit-bias-key"])
def test_wrong_fields_are_named(ivan, body, status, code, param):
    r = ivan.post("/api/generate", json=body)
    err = error_of(r)
    assert r.status_code == status and err["code"] == code and err["param"] == param, r.text
    assert param in err["message"]


@pytest.mark.parametrize("body, status, code", [
    ({"prompt": ""}, 400, "invalid_prompt"),
    ({}, 400, "invalid_prompt"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_prompt"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "invalid_max_tokens"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "invalid_max_tokens"),
    # Over the tenant's max_tokens_per_request and the context window: the tenant's limit is named first.
    ({"prompt": "hi", "max_tokens": 10**12}, 413, "request_too_large"),
    ({"prompt": "hi", "max_tokens": 5000}, 413, "request_too_large"),
    ({"prompt": "hello " * 9000, "max_tokens": 1}, 400, "context_length_exceeded"),
    ({"prompt": "hi", "temperature": -1}, 400, "invalid_sampling"),
    ({"prompt": "hi", "top_p": 0}, 400, "invalid_sampling"),
    ({"prompt": "hi", "stop": [""]}, 400, "invalid_stop"),
    ({"tokens": [10**9]}, 400, "invalid_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_messages"),
    ({"messages": []}, 400, "invalid_messages"),
    ({"prompt": "hi", "priority": "urgent"}, 400, "invalid_priority"),
], ids=["empty-prompt", "no-prompt", "two-prompts", "negative-max-tokens", "zero-max-tokens", "huge-max-tokens",
        "over-quota-max-tokens", "prompt-over-context", "negative-temperature", "top-p-zero", "empty-stop",
        "token-out-of-vocab", "unknown-role", "no-messages", "unknown-priority"])
def test_bad_values_are_refused_by_the_engine_checks(ivan, body, status, code):
    r = ivan.post("/api/generate", json=body)
    assert r.status_code == status and error_of(r)["code"] == code, r.text


@pytest.mark.parametrize("path, extra, status, code, param", [
    ("/v1/chat/completions", {"n": 0}, 400, "invalid_n", "n"),
    ("/v1/chat/completions", {"n": 99}, 400, "invalid_n", "n"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, 400,
     "invalid_tools", "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, 400, "invalid_tools", "tool_choice"),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400,
     "invalid_tools", "tool_choice"),
    ("/v1/chat/completions", {"presence_penalty": 5}, 400, "invalid_sampling", None),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, 400, "unsupported_parameter",
     "response_format"),
    ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}}}}, 400,
     "invalid_structured_output", "response_format"),
    ("/v1/chat/completions", {"structured_outputs": {"regex": "a+", "choice": ["a"]}}, 400,
     "invalid_structured_output", "structured_outputs"),
    ("/v1/chat/completions", {"frobnicate": True}, 400, "unknown_parameter", "frobnicate"),
    ("/v1/chat/completions", {"model": "gpt-4o"}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"max_tokens": "2"}, 400, "invalid_type", "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 5000}, 400, "request_too_large", None),
    ("/v1/chat/completions", {"stream_options": {"include_usage": True, "x": 1}}, 400, "unknown_parameter", "x"),
    ("/v1/completions", {"best_of": 3}, 400, "unsupported_parameter", "best_of"),
    ("/v1/completions", {"prompt": ["a"] * 65}, 400, "invalid_prompt", "prompt"),
    ("/v1/completions", {"suffix": "end"}, 400, "unsupported_parameter", "suffix"),
], ids=["n-zero", "n-large", "tool-name", "choice-without-tools", "unknown-tool", "penalty", "format",
        "bad-schema", "two-structures", "unknown", "unknown-model", "type", "max-tokens-quota", "stream-options",
        "best-of", "too-many-prompts", "suffix"])
def test_openai_endpoints_refuse_what_they_do_not_support(ivan, path, extra, status, code, param):
    body = {**(CHAT if "chat" in path else COMPLETION), **extra}
    r = ivan.post(path, json=body)
    err = error_of(r)
    assert r.status_code == status and err["code"] == code and err["param"] == param, r.text
    # OpenAI's error shape: the SDK and LangChain read ``type``; a limit of one request is a 400.
    assert err["type"] == ("invalid_request_error") and "\n" not in err["message"], r.text


def test_openai_required_fields(ivan):
    r = ivan.post("/v1/chat/completions", json={"model": "default"})
    assert r.status_code == 400 and error_of(r)["code"] == "missing_parameter" and error_of(r)["param"] == "messages"
    r = ivan.post("/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 400 and error_of(r)["param"] == "model"


def test_documented_openai_fields_are_accepted(ivan):
    body = {**CHAT, "n": 1, "seed": 7, "user": "someone", "presence_penalty": 0, "frequency_penalty": 0.0,
            "metadata": {"course": "nlp"}, "stop": None, "stream": False, "response_format": {"type": "text"},
            "tool_choice": "none", "parallel_tool_calls": False, "max_completion_tokens": 2, "top_p": 0.9,
            "logit_bias": {"42": -100}, "messages": [{"role": "developer", "content": "Be brief."},
                                                     {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    r = ivan.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


def test_body_over_the_limit_is_413(ivan):
    r = ivan.post("/api/generate", json={"prompt": "x" * (MAX_BODY + 10)})
    err = error_of(r)
    assert r.status_code == 413 and err["code"] == "body_too_large" and err["value"] == MAX_BODY


def test_absurd_content_length_is_refused_before_the_body(engine_proc, ivan):
    with socket.create_connection(("127.0.0.1", engine_proc.port), timeout=30) as s:
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ivan.token.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{")
        answer = b""
        while b"body_too_large" not in answer:
            chunk = s.recv(65536)      # the server answers without waiting for the body
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b'"body_too_large"' in answer


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "token "},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}],
                         ids=["none", "unknown", "empty", "basic"])
@pytest.mark.parametrize("method, path", [("GET", "/api/me"), ("POST", "/api/generate"), ("GET", "/v1/models"),
                                          ("POST", "/v1/chat/completions"), ("GET", "/api/admin/tenants")])
def test_no_valid_token_is_401(engine_proc, headers, method, path):
    r = requests.request(method, engine_proc.url + path, headers=headers, json={"prompt": "hi"}, timeout=30)
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"


def test_unknown_paths_and_methods(ivan):
    r = ivan.get("/api/nothing-here")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    r = ivan.delete("/api/me")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed" and r.headers["Allow"] == "GET"


def test_admin_input_is_checked(engine_proc):
    admin = engine_proc.client("root", admin=True)
    for body, field in [({"weight": -1}, "weight"), ({"bogus": 1}, "bogus"), ({"kv_pages": "many"}, "kv_pages"),
                        ({"priority": "urgent"}, "priority")]:
        r = admin.put("/api/admin/quotas/users/ivan", json=body)
        assert r.status_code == 400 and error_of(r)["code"] == "invalid_quota" and field in error_of(r)["message"]
    r = admin.put("/api/admin/quotas/users/" + "n" * 300, json={"weight": 2})
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_name"
    r = admin.get("/api/admin/quotas/users/nobody-has-this")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_the_engine_keeps_serving_after_all_that(ivan, engine_proc):
    # ignore_eos: whether the model's first token is an end is the model's business, not this test's.
    r = ivan.post("/api/generate", json={"prompt": "Still there?", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200 and len(r.json()["tokens"]) == 2
    s = engine_proc.status()
    assert s["running_generations"] == 0 and s["kv"]["used_pages"] == 0
