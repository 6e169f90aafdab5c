"""Structured outputs, tools, choices, prompt logprobs and penalties through the real ``openai`` SDK,
against the real engine and the real default model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest

MODEL = "default"


@pytest.fixture(scope="module")
def oai(engine_proc):
    return openai.OpenAI(base_url=engine_proc.url + "/v1", api_key=engine_proc.token("sam"), max_retries=0)


def _obj(props: dict, required=None) -> dict:
    return {"type": "object", "properties": props, "required": list(required or props),
            "additionalProperties": False}


SCHEMAS = [
    _obj({"answer": {"type": "string", "maxLength": 20}}),
    _obj({"ok": {"type": "boolean"}}),
    _obj({"count": {"type": "integer", "minimum": 0, "maximum": 10}}),
    _obj({"score": {"type": "number", "minimum": 0, "maximum": 1}}),
    _obj({"colour": {"enum": ["red", "green", "blue"]}}),
    _obj({"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}),
    _obj({"tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3}}),
    _obj({"point": _obj({"x": {"type": "integer", "maximum": 99}, "y": {"type": "integer", "maximum": 99}})}),
    _obj({"kind": {"const": "city"}, "name": {"type": "string", "maxLength": 15}}),
    _obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}),
    _obj({"maybe": {"type": ["integer", "null"], "maximum": 100}}),
    _obj({"items": {"type": "array", "items": _obj({"id": {"type": "integer", "minimum": 0, "maximum": 999}}),
                    "maxItems": 2}}),
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 3, "maxItems": 3},
    _obj({"yes": {"type": "boolean"}, "why": {"type": "string", "maxLength": 30}}),
    _obj({"unit": {"enum": ["C", "F"]}, "value": {"type": "number", "minimum": -50, "maximum": 150}}),
    _obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
    _obj({"a": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "boolean"}]}}),
    _obj({"words": {"type": "array", "items": {"enum": ["one", "two", "three"]}, "maxItems": 3}}),
    _obj({"title": {"type": "string", "maxLength": 25}, "year": {"type": "integer", "minimum": 1900,
                                                                 "maximum": 2100}}),
    _obj({"nested": _obj({"deeper": _obj({"flag": {"type": "boolean"}})})}),
]


def test_json_schema_answers_always_validate(oai):
    def ask(i_schema):
        i, schema = i_schema
        out = oai.chat.completions.create(
            model=MODEL, max_tokens=120, temperature=0.7, seed=i,
            messages=[{"role": "user", "content": "Fill in the JSON object for a random example."}],
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema,
                                                                    "strict": True}})
        return schema, out.choices[0]
    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        answers = list(pool.map(ask, enumerate(SCHEMAS)))
    for schema, choice in answers:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_mode_and_the_sdks_parse(oai):
    out = oai.chat.completions.create(model=MODEL, max_tokens=200, temperature=0,
                                      response_format={"type": "json_object"},
                                      messages=[{"role": "user", "content": 'Reply with a JSON object with the keys '
                                                 '"name" and "age" for a cat called Tom who is 3.'}])
    assert json.loads(out.choices[0].message.content) == {"name": "Tom", "age": 3}

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=20)
        population: int = pydantic.Field(ge=0, le=100_000_000)   # unbounded numbers can run to max_tokens

    parsed = oai.chat.completions.parse(model=MODEL, max_tokens=100, temperature=0, response_format=City,
                                        messages=[{"role": "user", "content": "Describe Paris."}])
    assert isinstance(parsed.choices[0].message.parsed, City)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": _obj({"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}})}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
                                         "parameters": _obj({"tz": {"type": "string", "maxLength": 30}})}}


def test_a_named_tool_call_always_parses_with_valid_arguments(oai):
    for seed in range(3):
        out = oai.chat.completions.create(
            model=MODEL, max_tokens=80, temperature=1.0, seed=seed, tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            messages=[{"role": "user", "content": "What is the weather in Lyon?"}])
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_required_tool_call_streams_as_openai_sends_it(oai):
    stream = oai.chat.completions.create(
        model=MODEL, max_tokens=80, tools=[WEATHER, TIME], tool_choice="required", stream=True,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}])
    calls, finish = {}, None
    for chunk in stream:
        for c in chunk.choices:
            for d in c.delta.tool_calls or ():
                entry = calls.setdefault(d.index, {"name": "", "arguments": ""})
                entry["name"] += d.function.name or ""
                entry["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    call = calls[0]
    tool = {"get_weather": WEATHER, "get_time": TIME}[call["name"]]
    jsonschema.validate(json.loads(call["arguments"]), tool["function"]["parameters"])


def test_auto_tools_with_a_tool_result_in_the_history(oai):
    history = [
        {"role": "user", "content": "What is the weather in Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Lyon", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    out = oai.chat.completions.create(model=MODEL, max_tokens=40, temperature=0, tools=[WEATHER], messages=history)
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.message.tool_calls:
        for call in choice.message.tool_calls:
            assert call.function.name == "get_weather"
            json.loads(call.function.arguments)
    else:
        assert choice.message.content
    none = oai.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, tools=[WEATHER],
                                       tool_choice="none", messages=history[:1])
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content


def test_n_choices_come_from_one_prefill(oai):
    msgs = [{"role": "user", "content": "Write a word."}]
    one = oai.chat.completions.create(model=MODEL, max_tokens=5, messages=msgs)
    three = oai.chat.completions.create(model=MODEL, max_tokens=5, n=3, temperature=1.0, seed=3, messages=msgs)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert 3 <= three.usage.completion_tokens <= 15     # every choice's tokens count
    many = oai.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], n=2, max_tokens=3,
                                  temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text and many.choices[2].text == many.choices[3].text


def test_echo_prompt_logprobs_equal_rescoring(oai, engine_proc, tokenizer):
    prompt = tokenizer.encode("The capital of France is", add_special_tokens=False)
    gen = engine_proc.client("sam").post("/api/generate", json={"tokens": prompt, "max_tokens": 4}).json()
    full = prompt + gen["tokens"]
    echo = oai.completions.create(model=MODEL, prompt=full, max_tokens=1, temperature=0, logprobs=1, echo=True)
    elp = echo.choices[0].logprobs
    assert elp.token_logprobs[0] is None and len(elp.tokens) == len(full) + 1
    # The generated tokens, scored again as part of a prompt, have the logprobs they were sampled with.
    assert elp.token_logprobs[len(prompt):len(full)] == pytest.approx(gen["logprobs"], abs=2e-3)
    assert all(len(top) == 1 for top in elp.top_logprobs[1:])


def test_penalties_change_the_output(oai):
    msgs = [{"role": "user", "content": "Say 'cat cat cat cat cat cat cat cat'."}]
    plain = oai.chat.completions.create(model=MODEL, max_tokens=24, temperature=0, messages=msgs)
    pen = oai.chat.completions.create(model=MODEL, max_tokens=24, temperature=0, messages=msgs,
                                      frequency_penalty=2.0, presence_penalty=1.0)
    assert plain.choices[0].message.content != pen.choices[0].message.content


def test_errors_are_the_sdks_typed_exceptions_with_type(oai, engine_proc):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, max_tokens=5000, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError) as e:
        oai.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=10)
    assert "maximum context length is" in e.value.body["message"]
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model=MODEL, tools=[WEATHER], tool_choice={"type": "function",
                                                                               "function": {"name": "nope"}},
                                    messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "tool_choice"


def test_responses_api_text_stream_and_tools(oai):
    r = oai.responses.create(model=MODEL, input="Name a colour.", instructions="Be brief.", max_output_tokens=8,
                             temperature=0)
    chat = oai.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}])
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.output_tokens == chat.usage.completion_tokens and r.status in ("completed", "incomplete")

    kinds, text = [], ""
    with oai.responses.stream(model=MODEL, input="Name a colour.", instructions="Be brief.", max_output_tokens=8,
                              temperature=0) as stream:
        for ev in stream:
            kinds.append(ev.type)
            if ev.type == "response.output_text.delta":
                text += ev.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert text == final.output_text == r.output_text

    tool = {"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                           "required": ["city"]}}
    called = oai.responses.create(model=MODEL, input="Weather in Lyon?", tools=[tool],
                                  tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60)
    (call,) = [o for o in called.output if o.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    answered = oai.responses.create(model=MODEL, max_output_tokens=20, tools=[tool], input=[
        {"role": "user", "content": "Weather in Lyon?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert answered.output
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=MODEL, input="hi", previous_response_id="resp_x")
    assert e.value.body["param"] == "previous_response_id"
