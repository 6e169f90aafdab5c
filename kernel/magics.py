"""Notebook magics: ``%%generate``, ``%%chat``, ``%%inferlet`` and ``%potluck``.

Each prints as it goes (tokens, an inferlet's output) and reports a failure as
one line naming the limit hit, never a traceback from the HTTP layer. They are
thin: everything they do is a call of ``potluck.kernel.client``.
"""

from __future__ import annotations

import json
import shlex
import sys

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import client as api
from .client import PotluckError


def report(e: PotluckError) -> None:
    print(f"potluck: {e}", file=sys.stderr, flush=True)


def _store(shell, name: str | None, value) -> None:
    if name:
        shell.user_ns[name] = value



def _stream_into_cell(open_stream):
    """Print a generation into the cell as it streams; the stream, or None after an error or interrupt."""
    s = None
    try:
        s = open_stream()
        for piece in s:
            print(piece, end="", flush=True)
        print()
        return s
    except PotluckError as e:
        report(e)
    except KeyboardInterrupt as e:
        # The engine cancels the generation when the connection closes; the text so far is kept.
        if not isinstance(e, api.Interrupted):
            e = s.interrupted() if s is not None else e
        print(f"\npotluck: {e or 'interrupted'}", file=sys.stderr, flush=True)
    return None

@magics_class
class PotluckMagics(Magics):
    def __init__(self, shell):
        super().__init__(shell)
        self.history: list[dict] = []       # the %%chat conversation of this kernel

    # ------------------------------------------------------------ %%generate
    @magic_arguments()
    @argument("-n", "--max-tokens", type=int, default=None, help="Most tokens to generate.")
    @argument("-t", "--temperature", type=float, default=None, help="0 (default) is greedy.")
    @argument("--seed", type=int, default=None, help="Sampling seed.")
    @argument("-c", "--context", default=None, help="Continue my saved context of this name.")
    @argument("-o", "--out", default=None, help="Also store the text in this variable.")
    @cell_magic
    def generate(self, line: str, cell: str):
        """Generate a continuation of the cell's text, streamed into the output as it comes."""
        args = parse_argstring(self.generate, line)
        s = _stream_into_cell(lambda: api.default().stream(
            cell.rstrip("\n"), context=args.context, max_tokens=args.max_tokens,
            temperature=args.temperature, seed=args.seed))
        if s is not None:
            _store(self.shell, args.out, s.result)

    # ------------------------------------------------------------ %%chat
    @magic_arguments()
    @argument("-n", "--max-tokens", type=int, default=None, help="Most tokens in the reply.")
    @argument("-t", "--temperature", type=float, default=None, help="0 (default) is greedy.")
    @argument("-s", "--system", default=None, help="A system message (starts a new conversation).")
    @argument("--new", action="store_true", help="Forget the conversation so far.")
    @argument("-o", "--out", default=None, help="Also store the reply in this variable.")
    @cell_magic
    def chat(self, line: str, cell: str):
        """One turn of this kernel's conversation: the cell is my message, the reply streams in.

        The history stays in the kernel; the engine reuses its KV cache for the part it has seen.
        """
        args = parse_argstring(self.chat, line)
        if args.new or args.system:
            self.history = []
        if args.system:
            self.history.append({"role": "system", "content": args.system})
        messages = self.history + [{"role": "user", "content": cell.strip()}]
        s = _stream_into_cell(lambda: api.default().stream(
            messages=messages, max_tokens=args.max_tokens, temperature=args.temperature))
        if s is None:
            return
        self.history = messages + [{"role": "assistant", "content": str(s.result)}]
        _store(self.shell, args.out, s.result)

    # ------------------------------------------------------------ %%inferlet
    @cell_magic
    def inferlet(self, line: str, cell: str):
        """Run the cell as an inferlet in the engine's sandbox; its output streams in live.

        Arguments after the magic are the run's JSON ``args``: ``%%inferlet n=4 question="Why?"``
        (values parsed as JSON when they can be), or ``%%inferlet --args '{"n": 4}'``.
        ``-o NAME`` stores the ``RunResult``. Interrupting the cell cancels the run.
        """
        try:
            run_args, out = parse_run_args(line)
        except ValueError as e:
            print(f"potluck: {e}", file=sys.stderr)
            return
        try:
            result = api.default().run(cell, **run_args)
        except PotluckError as e:
            return report(e)
        if not result.ok and result.error:
            pass        # print_event already said it, as one line
        _store(self.shell, out, result)

    # ------------------------------------------------------------ %potluck
    @line_magic
    def potluck(self, line: str):
        """%potluck [status|usage|quota|contexts|runs|cancel RUN_ID|connect URL [TOKEN]]: where I stand."""
        words = shlex.split(line)
        what = words[0] if words else "summary"
        c = api.default()
        try:
            if what == "status":
                print(format_status(c.status()))
            elif what == "usage":
                print(format_usage(c.me()))
            elif what == "quota":
                print(format_quota(c.me()))
            elif what == "contexts":
                rows = c.contexts()
                print("\n".join(f"{r['name']:<32} {r['n_tokens']:>7} tokens" for r in rows) or "no saved contexts")
            elif what == "runs":
                rows = c.runs()
                print("\n".join(f"{r.get('id')}  {r.get('state'):<10} {r.get('error') or ''}" for r in rows)
                      or "no runs")
            elif what == "cancel" and len(words) == 2:
                c.cancel(words[1])
                print(f"cancelled {words[1]}")
            elif what == "connect" and len(words) in (2, 3):
                c = api.connect(words[1], words[2] if len(words) == 3 else None)
                print(format_status(c.status()))
            elif what == "summary":
                me = c.me()
                print(format_status(c.status()))
                print(format_usage(me))
            else:
                print(self.potluck.__doc__, file=sys.stderr)
        except PotluckError as e:
            report(e)


def parse_run_args(line: str) -> tuple[dict, str | None]:
    words = shlex.split(line)
    args: dict = {}
    out = None
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("-o", "--out") and i + 1 < len(words):
            out, i = words[i + 1], i + 2
            continue
        if w == "--args" and i + 1 < len(words):
            extra = json.loads(words[i + 1])
            if not isinstance(extra, dict):
                raise ValueError("--args must be a JSON object")
            args.update(extra)
            i += 2
            continue
        key, eq, value = w.partition("=")
        if not eq or not key.isidentifier():
            raise ValueError(f"run arguments are key=value, got {w!r}")
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
        i += 1
    return args, out


def format_status(st: dict) -> str:
    kv = st.get("kv", {})
    dev = st.get("device", {})
    return (f"engine {st.get('version')}: {st.get('model')} on {dev.get('name', '?')} "
            f"(profile {st.get('profile', {}).get('name', '?')}); KV {kv.get('used_pages', 0)}/"
            f"{kv.get('total_pages', 0)} pages used; {st.get('active_tenants', 0)} active users, "
            f"queue {st.get('queue_depth', 0)}")


def format_usage(me: dict) -> str:
    u, q = me.get("usage") or {}, me.get("quota") or {}

    def of(used, limit):
        return f"{used}/{limit}" if limit is not None else f"{used} (no limit)"
    groups = ", ".join(me.get("groups") or []) or "none"
    return (f"{me.get('name')} (groups: {groups}{', admin' if me.get('is_admin') else ''}): "
            f"tokens this minute {of(u.get('tokens_last_minute', 0), q.get('tokens_per_minute'))}, "
            f"today {of(u.get('tokens_today', 0), q.get('tokens_per_day'))}; "
            f"KV pages {of(me.get('kv_pages', 0), q.get('kv_pages'))}; "
            f"runs {of(u.get('active_runs', 0), q.get('max_runs'))}")


def format_quota(me: dict) -> str:
    q, src = me.get("quota") or {}, me.get("quota_source") or {}
    width = max((len(k) for k in q), default=0)
    lines = [f"quota of {me.get('name')}:"]
    for k, v in q.items():
        lines.append(f"  {k:<{width}}  {json.dumps(v):<16} ({src.get(k, 'default')})")
    return "\n".join(lines)
