"""The generic Python runner: the app module componentize-py wraps into the runner component.

It exports ``runner.run(source)``: compile the cell's source, execute it with
the SDK set up, and turn anything uncaught into one line for the owner (an
uncaught guest exception would otherwise be a trap that says nothing).

Guest CPython only has the modules imported when the component is built
(componentize-py pre-initialises the interpreter and snapshots it), so every
standard module an inferlet may import is imported here.
"""

# The standard library inferlets get. Keep in sync with docs/inferlets.md.
import abc  # noqa: F401
import base64  # noqa: F401
import bisect  # noqa: F401
import builtins
import collections  # noqa: F401
import collections.abc  # noqa: F401
import contextlib  # noqa: F401
import copy  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import difflib  # noqa: F401
import enum  # noqa: F401
import fractions  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import operator  # noqa: F401
import pprint  # noqa: F401
import random  # noqa: F401
import re  # noqa: F401
import statistics  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import textwrap  # noqa: F401
import time  # noqa: F401
import traceback
import typing  # noqa: F401
import unicodedata  # noqa: F401

from componentize_py_types import Err
from wit_world import exports

import potluck_inferlet

MAX_ERROR = 500


def _one_line(e: BaseException) -> str:
    """``line N: Type: message`` for the innermost frame of the inferlet's own code."""
    if isinstance(e, SyntaxError) and e.filename == "<inferlet>":
        return f"line {e.lineno}: {type(e).__name__}: {e.msg}"
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<inferlet>":
            line = tb.tb_lineno
        tb = tb.tb_next
    msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, potluck_inferlet.InferletError):
        msg = str(e)
    msg = " ".join(msg.split())
    if len(msg) > MAX_ERROR:
        msg = msg[:MAX_ERROR] + "..."
    return f"line {line}: {msg}" if line else msg


def _show_traceback(e: BaseException) -> None:
    """The traceback of the inferlet's own frames, to the owner's stderr."""
    try:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "<inferlet>"]
        if frames and not isinstance(e, (SyntaxError, RecursionError, MemoryError)):
            text = "Traceback (inferlet):\n" + "".join(traceback.format_list(frames[-20:]))
            text += "".join(traceback.format_exception_only(type(e), e))
            import sys
            sys.stderr.write(text)
    except BaseException:
        pass


class Runner(exports.Runner):
    def run(self, source: str) -> None:
        try:
            potluck_inferlet._start()
            code = compile(source, "<inferlet>", "exec")
            namespace = {"__name__": "__main__", "__builtins__": builtins}
            exec(code, namespace)
        except SystemExit as e:
            if e.code not in (None, 0):
                potluck_inferlet._finish()
                raise Err(f"exit status {e.code}")
        except BaseException as e:
            _show_traceback(e)
            potluck_inferlet._finish()
            raise Err(_one_line(e))
        potluck_inferlet._finish()


# Pre-initialisation runs this module once at build time; exercising json here
# keeps its C accelerator and caches in the snapshot.
json.loads(json.dumps({"warm": [1, 2.5, "x"]}))
