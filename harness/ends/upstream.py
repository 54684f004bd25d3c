"""Mock OpenAI Responses API (SSE) for driving a real `codex app-server` offline.

Behaviour comes from a `[[mock:NAME]]` / `[[mock:NAME=ARG]]` marker in the last user message, or a global mode.
Requests codex writes itself are answered as a model would: a review (review/start) runs `git status` and
reports each uncommitted file as a finding; a compaction (thread/compact/start) gets a summary.
Under /v1 it asks for no key; under /auth/v1 it wants one, as OpenAI's own API does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from harness.ends.answers import long_markdown, rich_markdown
from runtime.backoff import Backoff

Json = dict[str, Any]
MARKER = re.compile(r"\[\[mock:([a-z0-9_]+)(?:=([^\]]*))?\]\]")
FRAGMENT = re.compile(r"<([a-z_]+)>.*</\1>\Z", re.DOTALL)
AGENTS_MD = "# AGENTS.md instructions for "
PLAIN = re.compile(r'[^\s"=]+')
# What codex 0.171 tells the model about the turn's place, in its injected developer and user messages.
PLACE = {"cwd": re.compile(r"<cwd>([^<]*)</cwd>"), "sandbox": re.compile(r"`sandbox_mode` is `([a-z-]+)`"),
         "approval": re.compile(r"Approval policy is currently ([a-z-]+)")}
ECHO_CMD = "echo relay-approved"
JSON_CT = "application/json"
BEHAVIORS = frozenset(
    ("reply", "history", "whoami", "approve", "patch", "elicit", "work", "drop", "eof", "hang", "http500", "http",
     "failed", "slow", "markdown", "long_markdown", "ask", "review", "compact", "images")
)
# Behaviours whose first answer is a tool call; the model answers the tool's output with a message (`work`: after
# its second tool).
TOOL_CALLS = ("approve", "patch", "elicit", "ask", "review", "work")
# The user messages codex 0.171 writes itself for review/start and thread/compact/start: they carry no marker, so
# the mock knows them by their opening words, and answers as the model is asked to.
CODEX_PROMPTS = {"Review the current code changes": "review",
                 "You are performing a CONTEXT CHECKPOINT COMPACTION": "compact"}
CWD = re.compile(r"<cwd>([^<]*)</cwd>")
PORCELAIN = re.compile(r"^[ MADRCU?!]{2} (.+)$", re.MULTILINE)  # `git status --porcelain`: a status, then the path
# `[[mock:http=CODE]]`: the provider answers every request with that status and OpenAI's error body for it, the
# way a real provider refuses a missing key (401), a rate limit (429) or an outage (5xx).
HTTP_ERRORS: dict[int, tuple[str, str, str | None]] = {
    401: ("Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
          "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model", "invalid_request_error", "model_not_allowed"),
    429: ("Rate limit reached for requests per min. Please try again in 1s.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}
OUTPUT_TYPES = ("function_call_output", "custom_tool_call_output")
ESCALATE: Json = {"sandbox_permissions": "require_escalated", "justification": "mock needs approval"}
HANG_MAX_S = 600.0
SLOW_MAX_S = 120.0
# `elicit`: read a resource of the node's MCP server (harness/ends/mcp_asker.py), which asks the user a question.
MCP_READ: Json = {"server": "relay_asker", "uri": "relay://question"}
LONG_MAX = 1_000_000  # characters of a long_markdown answer
# `patch=N`: apply_patch adding this file, of N lines (1 by default).
PATCH_FILE = "relay_patch.txt"
# `work=S`: a turn that runs a command, then adds a file (no approval where the sandbox lets codex write), then answers
# after S seconds.
WORK_CMD = "echo relay-work-output"
NUMERIC = {"slow": r"\d+(\.\d*)?", "work": r"\d+(\.\d*)?", "patch": r"[1-9]\d{0,4}"}  # behaviours with a number
INCOMPLETE = ("drop", "eof", "hang", "failed")  # behaviours whose response never reaches response.completed
# `ask`: codex's request_user_input tool, as a model calls it (1 to 3 questions, each with options); ask=2 asks two.
QUESTIONS: list[Json] = [
    {"id": "env", "header": "Environment", "question": "Which environment should I deploy to?",
     "options": [{"label": "staging", "description": "Safe to break."},
                 {"label": "production", "description": "Real users see it."}]},
    {"id": "note", "header": "Note", "question": "What should the release note say?",
     "options": [{"label": "nothing", "description": "No note."}]},
]
REVIEW_CMD = "git status --porcelain"


def patch(path: str, lines: int) -> str:
    """apply_patch's input adding `path` with `lines` lines."""
    body = "".join(f"+patched by mock, line {i + 1}\n" for i in range(lines)) if lines > 1 else "+patched by mock\n"
    return f"*** Begin Patch\n*** Add File: {path}\n{body}*** End Patch\n"


def tokens(chars: int) -> int:
    """A rough token count (4 characters each), as the real API's would be: nonzero, and growing with the text."""
    return chars // 4 + 1


@dataclass
class MockUpstream:
    """Counters shared by the handlers; `mode` overrides every marker until cleared (reset keeps it)."""

    serves: Counter[str] = field(default_factory=Counter)
    by_behavior: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    mode: tuple[str, str | None] | None = None
    # The `usage` each prompt's responses reported, summed: what codex must tell the user the turn cost.
    usage: dict[str, Counter[str]] = field(default_factory=dict)

    def reset(self) -> None:
        self.serves.clear()
        self.by_behavior.clear()
        self.usage.clear()
        self.requests = 0

    def snapshot(self) -> Json:
        mode = None if self.mode is None else _fmt_marker(*self.mode)
        return {
            "serves": dict(self.serves),
            "requests": self.requests,
            "by_behavior": dict(self.by_behavior),
            "mode": mode,
            "usage": {key: dict(c) for key, c in self.usage.items()},
        }

    def charge(self, key: str, request_chars: int, output: Json, followup: bool, tally: bool) -> Json:
        """The Responses API's `usage` for one response, tallied per prompt. The input is the whole request (its
        instructions, tools and history); a follow-up shares its turn's prefix, which the API serves from cache."""
        counts = self.usage.setdefault(key, Counter())
        input_tokens = tokens(request_chars)
        cached = min(counts["last_input"], input_tokens) if followup else 0
        output_tokens = tokens(len(json.dumps(output)))
        usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached},
                 "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": input_tokens + output_tokens}
        if tally:
            counts.update(input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output_tokens,
                          total_tokens=input_tokens + output_tokens, responses=1)
            counts["last_input"] = input_tokens
        return usage


STATE_KEY = web.AppKey("state", MockUpstream)


def prompt_key(raw: str) -> str:
    """The key a prompt is counted under: "a [[mock:x]] b" keys and echoes as "a b"."""
    return " ".join(MARKER.sub(" ", raw).split())


def work_file(prompt: str) -> str:
    """The file a `work` turn adds: one per prompt, so turns on one node's workspace do not collide."""
    return f"relay_work_{hashlib.sha256(prompt_key(prompt).encode()).hexdigest()[:8]}.txt"


def _fmt_marker(name: str, arg: str | None) -> str:
    return name if arg is None else f"{name}={arg}"


def _parse_behavior(spec: str) -> tuple[str, str | None]:
    name, _, arg = spec.partition("=")
    if name not in BEHAVIORS:
        raise ValueError(f"unknown mock behaviour {name!r}")
    if name == "slow" and not re.fullmatch(NUMERIC["slow"], arg):
        raise ValueError(f"slow needs seconds, got {arg!r}")
    if name in ("work", "patch") and arg and not re.fullmatch(NUMERIC[name], arg):
        raise ValueError(f"{name} takes {'seconds' if name == 'work' else 'a number of lines'}, got {arg!r}")
    if name == "http" and not (arg.isdigit() and int(arg) in HTTP_ERRORS):
        raise ValueError(f"http needs one of the statuses {sorted(HTTP_ERRORS)}, got {arg!r}")
    if name == "long_markdown" and not (arg.isdigit() and 0 < int(arg) <= LONG_MAX):
        raise ValueError(f"long_markdown needs characters (1..{LONG_MAX}), got {arg!r}")
    return name, (arg if "=" in spec else None)


def _parts(item: Json) -> list[str]:
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    parts = content if isinstance(content, list) else []
    return [p.get("text", "") for p in parts if isinstance(p, dict)]


def _is_user(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user"


def _is_real_user(item: Any) -> bool:
    # Codex 0.171 also sends role=user messages it injects itself: `<environment_context>...</environment_context>`
    # and `# AGENTS.md instructions for <cwd> <INSTRUCTIONS>...`. Like Codex's own fragment matcher, a part is
    # injected if it is wholly wrapped in one `<tag>...</tag>` pair or starts with the AGENTS.md header; a
    # message is a real user turn unless every part is injected.
    if not _is_user(item):
        return False
    return not all(FRAGMENT.match(t.strip()) or t.lstrip().startswith(AGENTS_MD) for t in _parts(item))


def _tool_output(item: Json) -> str:
    out = item.get("output")
    if isinstance(out, str):
        return out
    if isinstance(out, list):
        return "".join(p.get("text", "") for p in out if isinstance(p, dict))
    if isinstance(out, dict) and isinstance(out.get("content"), str):
        return str(out["content"])
    return json.dumps(out)


def _whoami(body: Json, items: list[Any]) -> str:
    """What codex asked for: the turn's model and reasoning effort, and the place it told the model about (the
    newest of each, since a thread's history keeps the earlier ones)."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    texts = [t for item in items if isinstance(item, dict) for t in _parts(item)]
    found = {k: ([m for t in texts for m in rx.findall(t)] or [None])[-1] for k, rx in PLACE.items()}
    return (f"model: {body.get('model')}, effort: {effort}, cwd: {found['cwd']}, sandbox: {found['sandbox']}, "
            f"approval: {found['approval']}")


def _images(user: Json | None) -> str:
    """`images: N` and, per image, its media type, size and SHA-256 prefix, as the model received it."""
    parts = user.get("content") if isinstance(user, dict) else None
    urls = [p.get("image_url") for p in parts if isinstance(p, dict) and p.get("type") == "input_image"] \
        if isinstance(parts, list) else []
    seen = []
    for url in urls:
        head, _, data = str(url).partition(",")
        raw = base64.b64decode(data) if head.endswith(";base64") else b""
        seen.append(f"{head.removeprefix('data:').removesuffix(';base64')} {len(raw)} bytes "
                    f"sha256 {hashlib.sha256(raw).hexdigest()[:16]}")
    return f"images: {len(urls)}" + "".join(f"; {s}" for s in seen)


def _sse(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _message(mid: str, text: str | None) -> Json:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    status = "in_progress" if text is None else "completed"
    return {"type": "message", "id": mid, "role": "assistant", "status": status, "content": content}


def _outputs_in_turn(items: list[Any]) -> int:
    """Tool outputs since the turn's prompt: how far a multi-step behaviour (`work`) has got."""
    start = max((i for i, it in enumerate(items) if _is_real_user(it)), default=-1)
    return sum(1 for it in items[start + 1:] if isinstance(it, dict) and it.get("type") in OUTPUT_TYPES)


def _tool_call(name: str, call_id: str, key: str, arg: str | None = None, step: int = 0) -> Json | None:
    """The tool call a behaviour makes at `step` (tool outputs so far in the turn); None: it answers now."""
    if name == "work":
        if step == 0:
            return {"type": "function_call", "call_id": call_id, "name": "exec_command",
                    "arguments": json.dumps({"cmd": WORK_CMD})}
        if step == 1:
            return {"type": "custom_tool_call", "call_id": call_id, "name": "apply_patch",
                    "input": patch(work_file(key), 1)}
        return None
    if step:
        return None
    if name == "ask":
        asked = QUESTIONS[: 2 if arg == "2" else 1]
        return {"type": "function_call", "call_id": call_id, "name": "request_user_input",
                "arguments": json.dumps({"questions": asked})}
    if name == "review":  # a reviewer looks at what changed first
        return {"type": "function_call", "call_id": call_id, "name": "exec_command",
                "arguments": json.dumps({"cmd": REVIEW_CMD})}
    if name == "patch":  # `patch=N`: a file of N lines, for a diff too long to show inline
        return {"type": "custom_tool_call", "call_id": call_id, "name": "apply_patch",
                "input": patch(PATCH_FILE, int(arg or 1))}
    if name == "elicit":
        return {"type": "function_call", "call_id": call_id, "name": "read_mcp_resource", "arguments": json.dumps(MCP_READ)}
    args = json.dumps({"cmd": ECHO_CMD, **ESCALATE})
    return {"type": "function_call", "call_id": call_id, "name": "exec_command", "arguments": args}


def _review(output: str, items: list[Any]) -> str:
    """The review a model returns to codex (its review schema: findings, overall verdict): one finding per file
    `git status --porcelain` listed, located under the cwd codex told the model."""
    cwd = next((m.group(1) for it in items if _is_user(it) for t in _parts(it) if (m := CWD.search(t))), "")
    files = PORCELAIN.findall(output)
    findings = [{"title": f"[P2] Uncommitted change in {path}", "body": f"{path} has changes that are not committed yet.",
                 "confidence_score": 0.5, "priority": 2,
                 "code_location": {"absolute_file_path": f"{cwd}/{path}" if cwd else path,
                                   "line_range": {"start": 1, "end": 1}}} for path in files]
    return json.dumps({"findings": findings, "overall_correctness": "patch is correct" if not files else
                       "patch is incorrect", "overall_explanation": f"Reviewed {len(files)} uncommitted file(s).",
                       "overall_confidence_score": 0.5})


def _codex_prompt(raw: str) -> str | None:
    return next((name for opening, name in CODEX_PROMPTS.items() if raw.lstrip().startswith(opening)), None)


def _log(**kv: Any) -> None:
    # Values that would break `key=value` splitting are JSON-quoted.
    fields = (
        f"{k}={json.dumps(v) if isinstance(v, str) and not PLAIN.fullmatch(v) else v}" for k, v in kv.items()
    )
    print(" ".join(fields), file=sys.stderr, flush=True)


async def _wait_or_gone(request: web.Request, seconds: float) -> bool:
    """Sleep up to `seconds`; False as soon as the client disconnects (aiohttp does not cancel the handler)."""
    async for _ in Backoff(0.1, factor=1).tries(seconds):
        if request.transport is None or request.transport.is_closing():
            return False
    return True


async def _json_body(request: web.Request) -> Json:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not valid JSON"}), content_type=JSON_CT
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be a JSON object"}), content_type=JSON_CT
        )
    return body


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": kind}}, status=status)


async def responses(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    body = await _json_body(request)
    items = body.get("input")
    if not isinstance(items, list) or not items:
        return _error(400, "input must be a non-empty list", "invalid_request_error")
    state.requests += 1
    request_chars = len(await request.read())  # the body _json_body read, kept by aiohttp
    n, last = state.requests, items[-1]
    followup = isinstance(last, dict) and last.get("type") in OUTPUT_TYPES
    # A new turn ends with the prompt itself; a follow-up takes its marker from the turn's prompt.
    user = last if _is_user(last) else next((it for it in reversed(items) if _is_real_user(it)), None)
    raw = "\n".join(_parts(user)) if user is not None else ""
    key = prompt_key(raw)
    found = MARKER.search(raw)
    try:
        name, arg = state.mode or ((own, None) if (own := _codex_prompt(raw)) else
                                   _parse_behavior(found.group(0)[7:-2]) if found else ("reply", None))
    except ValueError as exc:
        _log(op="reject", n=n, error=str(exc))
        return _error(400, str(exc), "invalid_request_error")
    call = _tool_call(name, f"call_{n}", key, arg, _outputs_in_turn(items)) if name in TOOL_CALLS else None
    if followup and name == "review":
        text, name = _review(_tool_output(last), items), "reply"
    elif followup:
        text = f"tool said: {_tool_output(last)}"
        if call is None and name == "work":  # its tools ran: the answer, after `work=S` seconds
            name, arg = "slow", arg or "0"
        elif call is None and name in (*TOOL_CALLS, "history", "whoami"):
            name, arg = "reply", None
    elif name == "history":
        text = f"history: {sum(map(_is_real_user, items))} user messages"
    elif name == "whoami":
        text = _whoami(body, items)
    elif name == "compact":
        text = f"summary: the thread so far had {sum(map(_is_real_user, items)) - 1} user messages"
    elif name == "images":  # what images the user's message carried, as codex sent them (input_image data URLs)
        text = _images(user)
    elif name == "markdown":  # an answer in Markdown with hostile text (harness/ends/answers.py)
        text = rich_markdown(key)
    elif name == "long_markdown":
        text = long_markdown(int(arg or 0), key)
    else:
        text = f"mock reply: {key}"
    if serve := _is_user(last):
        state.serves[key] += 1
    state.by_behavior["followup" if followup else name] += 1
    _log(op="serve" if serve else "followup", behavior=_fmt_marker(name, arg), prompt_key=key, n=n)
    if name == "http500":
        return _error(500, "mock upstream internal error", "server_error")
    if name == "http":
        message, kind, code = HTTP_ERRORS[int(arg or 0)]
        return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}},
                                 status=int(arg or 0))
    # Tallied only for a response that reaches response.completed: codex hears of no other's usage.
    usage = state.charge(key, request_chars, call or {"text": text}, followup, tally=name not in INCOMPLETE)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        await _stream(request, resp, name, arg, text, n, call, usage)
    except ConnectionError:
        _log(op="client_gone", n=n)
    return resp


async def _stream(
    request: web.Request, resp: web.StreamResponse, name: str, arg: str | None, text: str, n: int,
    call: Json | None, usage: Json,
) -> None:
    rid, mid = f"resp_{n}", f"msg_{n}"
    await resp.write(_sse("response.created", response={"id": rid}))
    if name == "hang":
        await _wait_or_gone(request, HANG_MAX_S)
        return
    if name == "failed":
        error = {"code": "server_error", "message": "mock upstream reported response.failed"}
        await resp.write(_sse("response.failed", response={"id": rid, "status": "failed", "error": error}))
        return
    if call is not None:
        await resp.write(_sse("response.output_item.done", output_index=0, item=call))
        await resp.write(_sse("response.completed", response={"id": rid, "usage": usage}))
        return
    if name == "slow" and not await _wait_or_gone(request, min(float(arg or 0), SLOW_MAX_S)):
        return
    await resp.write(_sse("response.output_item.added", output_index=0, item=_message(mid, None)))
    step = len(text) // 4 + 1
    for i in range(0, len(text), step):
        delta = text[i : i + step]
        await resp.write(
            _sse("response.output_text.delta", item_id=mid, output_index=0, content_index=0, delta=delta)
        )
        if name == "drop":
            # Abort mid-body so Codex sees a truncated chunked stream, not a clean end.
            if request.transport is not None:
                request.transport.abort()
            return
    await resp.write(_sse("response.output_item.done", output_index=0, item=_message(mid, text)))
    if name != "eof":
        await resp.write(_sse("response.completed", response={"id": rid, "usage": usage}))


async def responses_with_key(request: web.Request) -> web.StreamResponse:
    """The provider under /auth/v1: like api.openai.com, a request without an API key gets 401, so a codex that
    is not logged in is refused here the way the real provider refuses it."""
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        _log(op="no_api_key", path=request.path)
        return web.json_response({"error": {
            "message": "You didn't provide an API key. You need to provide your API key in an Authorization header "
                       "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "type": "invalid_request_error", "code": None, "param": None}}, status=401)
    return await responses(request)


async def transcriptions(request: web.Request) -> web.Response:
    """OpenAI's speech to text (`POST /v1/audio/transcriptions`, multipart `file` and `model`): answers
    `{"text": ...}`. The test's "audio" is the words themselves in UTF-8, so the transcript is checkable; a request
    without a model or a file gets OpenAI's 400."""
    form = await request.post()
    upload, model = form.get("file"), form.get("model")
    if not isinstance(upload, web.FileField) or not model:
        missing = "model" if not model else "file"
        return web.json_response({"error": {"message": f"you must provide a {missing} parameter",
                                            "type": "invalid_request_error", "code": None, "param": missing}},
                                 status=400)
    data = upload.file.read()
    request.app[STATE_KEY].by_behavior["transcription"] += 1
    _log(op="transcription", model=str(model), filename=upload.filename, size=len(data))
    return web.json_response({"text": data.decode("utf-8", "replace").strip()})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].snapshot())


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.reset()
    return web.json_response(state.snapshot())


async def mode(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    spec = (await _json_body(request)).get("behavior")
    try:
        state.mode = None if spec is None else _parse_behavior(str(spec))
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    _log(op="mode", behavior=spec or "none")
    return web.json_response(state.snapshot())


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == JSON_CT:
            raise
        return web.json_response({"error": exc.reason, "path": request.path}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - the client gets JSON, never a traceback
        _log(op="error", path=request.path, error=repr(exc))
        return web.json_response({"error": "mock internal error"}, status=500)


def build_app(state: MockUpstream | None = None) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state or MockUpstream()
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/auth/v1/responses", responses_with_key)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_get("/_mock/stats", stats)
    app.router.add_post("/_mock/reset", reset)
    app.router.add_post("/_mock/mode", mode)
    return app


async def _serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    _log(op="listen", host=host, port=bound, pid=os.getpid())  # the harness reads the port from this line
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    _log(op="stop", port=bound)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m harness.upstream", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
