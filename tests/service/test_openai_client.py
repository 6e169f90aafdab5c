"""The real ``openai`` package against the real engine: same greedy text as /api/generate."""

from __future__ import annotations

import openai
import pytest

MESSAGES = [{"role": "user", "content": "Name three colours."}]
PROMPT = "The three primary colours are"
N = 8


@pytest.fixture(scope="module")
def oai(engine_proc):
    return openai.OpenAI(base_url=engine_proc.url + "/v1", api_key=engine_proc.token("olivia"), max_retries=0)


@pytest.fixture(scope="module")
def native(engine_proc):
    return engine_proc.client("olivia")


def native_text(native, **body) -> str:
    r = native.post("/api/generate", json={"max_tokens": N, **body})
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_models_lists_the_served_model(oai, engine_proc):
    models = [m.id for m in oai.models.list()]
    assert models == [engine_proc.status()["model"]]


def test_chat_completion_matches_native_greedy_text(oai, native):
    model = oai.models.list().data[0].id
    out = oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == native_text(native, messages=MESSAGES)
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= N
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_chat_completion_matches_native_greedy_text(oai, native):
    model = oai.models.list().data[0].id
    stream = oai.chat.completions.create(model=model, messages=MESSAGES, max_tokens=N, temperature=0,
                                         stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            finish = c.finish_reason or finish
    assert len(pieces) > 1, "the text should arrive token by token"
    assert "".join(pieces) == native_text(native, messages=MESSAGES)
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= N


def test_completion_matches_native_greedy_text(oai, native):
    model = oai.models.list().data[0].id
    out = oai.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0)
    assert out.choices[0].text == native_text(native, prompt=PROMPT)
    assert out.usage.completion_tokens == N or out.choices[0].finish_reason == "stop"


def test_streamed_completion_matches_too(oai, native):
    model = oai.models.list().data[0].id
    stream = oai.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == native_text(native, prompt=PROMPT)


def test_openai_client_errors_are_typed(oai, engine_proc):
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="default", messages=MESSAGES, max_tokens=2, audio={"voice": "x"})
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == "audio"
    assert e.value.body["type"] == "invalid_request_error"
    bad = openai.OpenAI(base_url=engine_proc.url + "/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_chat_logprobs(oai):
    out = oai.chat.completions.create(model="default", messages=MESSAGES, max_tokens=3, temperature=0,
                                      logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token
