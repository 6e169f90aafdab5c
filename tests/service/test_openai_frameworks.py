"""LangChain's ChatOpenAI and LiteLLM, unconfigured beyond base URL and key, against the real engine."""

from __future__ import annotations

import json

import pydantic
import pytest

langchain_openai = pytest.importorskip("langchain_openai")
litellm = pytest.importorskip("litellm")


class Pet(pydantic.BaseModel):
    """A pet."""
    name: str = pydantic.Field(max_length=20)
    legs: int = pydantic.Field(ge=0, le=8)


@pytest.fixture(scope="module")
def chat(engine_proc):
    return langchain_openai.ChatOpenAI(base_url=engine_proc.url + "/v1", api_key=engine_proc.token("lena"),
                                       model="default", temperature=0, max_tokens=80, max_retries=0)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(chat, method):
    out = chat.with_structured_output(Pet, method=method).invoke("A dog called Rex.")
    assert isinstance(out, Pet)


def test_langchain_json_mode_gives_a_json_object(chat):
    # json_mode sends no schema, only "a JSON object": the answer parses, its fields are the model's. (The
    # 135M model, asked for '{"name": ..., "legs": ...}', lists legs 1, 2, 3, ... past max_tokens in bfloat16.)
    out = chat.with_structured_output(Pet, method="json_mode", include_raw=True).invoke(
        'Reply with a JSON object with the keys "name" and "legs" for a dog called Rex with 4 legs.')
    assert isinstance(json.loads(out["raw"].content), dict)


def test_langchain_bind_tools(chat):
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"
    msg = chat.bind_tools([get_weather], tool_choice="required").invoke("Weather in Oslo?")
    (call,) = msg.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    # The answer to the call goes back as a tool message; the model then answers.
    from langchain_core.messages import HumanMessage, ToolMessage
    follow = chat.bind_tools([get_weather]).invoke([HumanMessage("Weather in Oslo?"), msg,
                                                    ToolMessage("sunny, 18 C", tool_call_id=call["id"])])
    assert follow.content or follow.tool_calls


@pytest.fixture(scope="module")
def lite(engine_proc):
    return {"model": "openai/default", "api_base": engine_proc.url + "/v1", "api_key": engine_proc.token("lena"),
            "num_retries": 0}


def test_litellm_response_format_and_tools(lite):
    schema = Pet.model_json_schema()
    r = litellm.completion(messages=[{"role": "user", "content": "A cat called Tom."}], max_tokens=60,
                           temperature=0, response_format={"type": "json_schema", "json_schema": {
                               "name": "Pet", "schema": schema, "strict": True}}, **lite)
    Pet.model_validate_json(r.choices[0].message.content)
    tool = {"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                             "parameters": {"type": "object", "properties": {
                                                 "word": {"type": "string", "maxLength": 20}},
                                                 "required": ["word"]}}}
    r = litellm.completion(messages=[{"role": "user", "content": "Look up 'potluck'."}], max_tokens=60,
                           tools=[tool], tool_choice={"type": "function", "function": {"name": "lookup"}}, **lite)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and "word" in json.loads(call.function.arguments)


def test_litellm_sees_context_window_exceeded(lite):
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(messages=[{"role": "user", "content": "word " * 9000}], max_tokens=10, **lite)
