"""``TextStream``: the one detokenizer and stop-string matcher of the engine and the guest SDK."""

from __future__ import annotations

from potluck.engine.textstream import TextStream

TEXT = "Grüße aus Köln 🙂, 日本語 too."


def decoder(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def test_streamed_text_equals_the_whole_decode_and_never_shows_half_a_character(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    stream = TextStream(decoder(tokenizer))
    deltas = [stream.push(t) for t in ids]
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT == stream.text
    assert not any("\ufffd" in d for d in deltas)
    # The emoji and the CJK characters span several byte-level tokens: some pushes show nothing yet.
    assert "" in deltas


def test_a_stop_string_split_over_tokens_ends_the_stream_and_is_never_shown(tokenizer):
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    stream = TextStream(decoder(tokenizer), stop=["日本"])
    shown = ""
    for t in ids:
        shown += stream.push(t)
        if stream.stopped:
            break
    assert stream.stopped
    assert shown == stream.text == TEXT[:TEXT.index("日本")]
    assert stream.push(ids[-1]) == "" and stream.finish() == ""


def test_text_that_might_start_a_stop_string_is_held_until_ruled_out(tokenizer):
    stream = TextStream(decoder(tokenizer), stop=["Köln!"])
    ids = tokenizer.encode("aus Köln 🙂", add_special_tokens=False)
    shown = "".join(stream.push(t) for t in ids)
    # "Köln" could have been the start of "Köln!" until the space came: nothing was lost.
    assert shown == "aus Köln 🙂" and not stream.stopped
    stream2 = TextStream(decoder(tokenizer), stop=["Köln!"])
    ids2 = tokenizer.encode("aus Köln", add_special_tokens=False)
    shown2 = "".join(stream2.push(t) for t in ids2)
    assert "Köln" not in shown2                      # held back: it may still become the stop string
    assert shown2 + stream2.finish() == "aus Köln"   # the end of the stream releases it
    assert stream2.text == "aus Köln"


def test_the_earliest_of_several_stop_strings_wins(tokenizer):
    stream = TextStream(decoder(tokenizer), stop=["too", "語"])
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    for t in ids:
        stream.push(t)
    assert stream.stopped and stream.text == TEXT[:TEXT.index("語")]
