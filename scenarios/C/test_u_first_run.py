"""U: the first run on a real machine. A node that cannot work says why at once (codex not logged in, a provider
that refuses or cannot be reached), each service has a `doctor`, and each task's life is in the node's log."""
from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser, without_usage
from harness.stack import paths, ports
from harness.stack.procs import log_fields
from harness.stack.stack import Stack, launch, write_codex_home
from runtime.bot.config import SETTINGS as BOT_LOADER
from runtime.manager.config import SETTINGS as MANAGER_SETTINGS
from runtime.node.config import SETTINGS as NODE_LOADER
from runtime.protocol import Api, new_id
from runtime.settings import Loader

NODE = "u1"  # a healthy node (stage C's fixture starts it with the bot)
# A provider that needs an OpenAI login, which this CODEX_HOME has not got: codex's own account/read says so.
NO_LOGIN = {"base_path": "/auth/v1", "requires_openai_auth": True}
# codex retries a failing provider three times (about 3 s), as it would by default (5 times), before it gives up.
RETRYING = {"stream_max_retries": 3}
BOT_TURN_TIMEOUT = 300.0  # the bot's default deadline for a turn: "at once" is measured against it
_chats = itertools.count(800_001)


def chat(tg: FakeTelegram) -> TelegramUser:
    return tg.user(Stack.ADMIN, next(_chats))


async def ask(user: TelegramUser, text: str) -> str:
    return str((await user.reply(await user.say(text)))["text"])


async def replace_mode(user: TelegramUser) -> None:
    """/result replace: these cases read a turn's outcome in its placeholder (/result send, the default, posts it
    below instead: P1-12)."""
    assert (await ask(user, "/result replace")).startswith("Result mode set to replace")


async def prompt_outcome(user: TelegramUser, text: str, timeout: float = 60.0) -> tuple[dict[str, Any], float]:
    """Send a prompt; its placeholder once it shows the final outcome (with every edit it went through), and the
    seconds that took."""
    started = time.monotonic()
    placeholder = await user.sent(await user.say(text))
    assert placeholder["text"].startswith("⏳"), placeholder
    final = await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "⏳" not in m["text"],
                                   timeout)
    return {**final, "text": without_usage(final["text"])}, time.monotonic() - started


def notices(message: dict[str, Any]) -> list[str]:
    """The retry notices a progress message showed, in order."""
    return [line for e in message["edits"] for line in (e["text"] or "").splitlines() if line.startswith("🔄")]


# ---- U-01 ----------------------------------------------------------------------------------------

@pytest.mark.case("U-01")
async def test_not_logged_in(stack: Stack, tg: FakeTelegram) -> None:
    """codex not logged in: said at the node's start and in its status with the fix; a prompt fails at once"""
    node_id = new_id("u01")
    proc = await stack.add_node(node_id, provider=NO_LOGIN)
    said = log_fields(await proc.wait_log("node_not_ready"))
    assert said["state"] == "not_logged_in" and "codex login" in said["fix"] and said["level"] == "warning", said
    readiness = await stack.wait_readiness(node_id, "not_logged_in")
    assert readiness.get("account") is None and readiness["requires_openai_auth"], readiness
    assert readiness["codex_version"].startswith("codex-cli"), readiness
    assert (await stack.call(Api.STATUS, {"node_id": node_id}))["readiness"]["state"] == "not_logged_in"
    assert await stack.gauge('relay_nodes_ready{state="not_logged_in"}') >= 1

    user = chat(tg)
    await user.pick_node(node_id)
    await replace_mode(user)
    assert f"• {node_id}: online, not ready: codex is not logged in" in await ask(user, "/node")
    status = await ask(user, "/status")
    assert "ready: no, codex is not logged in" in status and "fix: " in status and "`codex login`" in status, status

    prompt = f"u01 {new_id('p')}"
    final, seconds = await prompt_outcome(user, prompt)
    assert "kind=not_logged_in, retriable=no" in final["text"] and "`codex login`" in final["text"], final
    assert seconds < 5, f"the refusal took {seconds:.1f}s; the turn's deadline is {BOT_TURN_TIMEOUT:g}s"
    assert await stack.serves(prompt) == 0  # codex never asked the provider
    refused = [f for f in map(log_fields, proc.log_lines("task_final")) if f.get("error_kind") == "not_logged_in"]
    assert refused and "requires OpenAI auth" in refused[-1]["error"], refused

    # The operator logs codex in on that machine; the node reads the new login before it would refuse again.
    login = await asyncio.to_thread(subprocess.run, [str(paths.codex_bin()), "login", "--with-api-key"],
                                    input="sk-relay-u01\n", capture_output=True, text=True, timeout=60, check=False,
                                    env={**os.environ, "CODEX_HOME": stack.node_settings[node_id]["codex_home"]})
    assert login.returncode == 0, login.stderr
    final, _ = await prompt_outcome(user, f"{prompt} after codex login")
    assert final["text"] == f"mock reply: {prompt} after codex login", final
    assert (await stack.wait_readiness(node_id, "ready"))["account"] == "apiKey"
    proc.terminate()


# ---- U-02 ----------------------------------------------------------------------------------------

@pytest.mark.case("U-02")
async def test_provider_refuses_or_is_unreachable(stack: Stack, tg: FakeTelegram) -> None:
    """401/429/503 and an unreachable provider: retry notices in the progress message, then a prompt failure"""
    node_id = new_id("u02")
    proc = await stack.add_node(node_id, provider=RETRYING, provider_wait=2)
    user = chat(tg)
    await user.pick_node(node_id)
    await replace_mode(user)
    for status, kind, retried in ((503, "upstream_error, retriable=yes", True), (401, "upstream_unauthorized, "
                                  "retriable=no", True), (429, "upstream_error, retriable=yes", False)):
        final, seconds = await prompt_outcome(user, f"u02 provider answers {status} [[mock:http={status}]]")
        assert f"kind={kind}" in final["text"] and str(status) in final["text"], final  # and codex's reason
        assert seconds < 20, f"HTTP {status}: the failure took {seconds:.1f}s"
        shown = notices(final)
        if retried:  # as codex sent them, e.g. "🔄 reconnecting 2/3: unexpected status 503 Service Unavailable: ..."
            # (notices within the bot's progress_interval of each other show as the latest of them)
            assert shown and all(re.match(rf"🔄 reconnecting [123]/3: unexpected status {status} ", n) for n in shown), \
                final["edits"]
        if status == 401:
            assert "`codex login`" in final["text"], final

    # The provider cannot be reached at all: codex waits for the network without end; the node gives up for it
    # after provider_wait, says so, and then refuses at once until the provider is back.
    async with stack.toxics.link_down(stack.upstream_link(node_id)):
        final, seconds = await prompt_outcome(user, "u02 while the provider is unreachable")
        assert "kind=provider_unreachable, retriable=yes" in final["text"], final
        assert any("waiting for network" in n for n in notices(final)), final["edits"]
        assert seconds < 15, f"gave up after {seconds:.1f}s; provider_wait is 2s"
        readiness = await stack.wait_readiness(node_id, "provider_unreachable")
        assert readiness["provider_reachable"] is False and readiness["provider_url"] in readiness["problem"]
        final, seconds = await prompt_outcome(user, "u02 still unreachable")
        assert "kind=provider_unreachable" in final["text"] and seconds < 10, (final, seconds)
        assert not notices(final)  # refused before codex was asked
    final, _ = await prompt_outcome(user, "u02 back again")
    assert final["text"] == "mock reply: u02 back again", final
    await stack.wait_readiness(node_id, "ready")
    proc.terminate()


# ---- U-03 ----------------------------------------------------------------------------------------

async def doctor(loader: Loader[Any], options: dict[str, Any], config_file: Path | None = None) -> tuple[int, list[str]]:
    """`codex-relay-<service> doctor` with these settings (secrets by environment, as the harness gives them):
    its exit code and its lines."""
    _, env = launch(loader, "", options)
    argv = [str(Path(sys.executable).parent / loader.prog), "doctor"]
    if config_file is not None:
        argv += ["--config", str(config_file)]
    for key, value in options.items():
        if not loader.fields[key].secret:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    out = await asyncio.to_thread(subprocess.run, argv, env={**os.environ, **env}, capture_output=True, text=True,
                                  timeout=120, check=False)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    return out.returncode, out.stdout.splitlines()


def line(lines: list[str], name: str) -> str:
    [found] = [ln for ln in lines if ln.split(":", 1)[0].split(maxsplit=1)[-1] == name]
    return found


def statuses(lines: list[str]) -> dict[str, str]:
    return {ln.split(":", 1)[0].split(maxsplit=1)[1]: ln.split()[0] for ln in lines if not ln.startswith("doctor:")}


@pytest.mark.case("U-03")
async def test_doctor(stack: Stack, tg: FakeTelegram, tmp_path: Path) -> None:
    """`doctor` of the node, the manager and the bot: a line per check, each failure with its fix, exit 0 only if all pass"""
    # The node, from a node.toml as the README writes it; its token by environment.
    settings = stack.node_settings[NODE]
    secret = {"token": settings["token"]}
    toml = tmp_path / "node.toml"
    toml.write_text("".join(f'{k} = "{settings[k]}"\n' for k in ("node_id", "manager_url", "cwd", "codex_bin",
                                                                  "codex_home")))
    registrations = len(stack.procs[NODE].log_lines("registered"))
    code, lines = await doctor(NODE_LOADER, secret, toml)
    assert code == 0 and set(statuses(lines).values()) == {"ok"}, lines
    assert list(statuses(lines)) == ["config", "cwd", "codex", "codex login", "provider", "manager", "token"], lines
    assert "accepted" in line(lines, "token") and "codex-cli" in line(lines, "codex"), lines
    # Its token check registered nothing: the running node kept its session.
    assert len(stack.procs[NODE].log_lines("registered")) == registrations
    assert await stack.metric("registrations_checked") >= 1 and NODE in (await stack.call(Api.SERVERS))["online"]

    code, lines = await doctor(NODE_LOADER, {"token": "crt_wrong"}, toml)
    assert code == 1 and statuses(lines)["token"] == "FAIL", lines
    assert "token is unknown or revoked" in line(lines, "token") and "/token generate node=u1" in line(lines, "token")

    with ports.reserved() as closed:  # bound, not listening: nothing answers there
        down = f"ws://127.0.0.1:{closed.getsockname()[1]}{Api.NODE_WS}"
        code, lines = await doctor(NODE_LOADER, {**secret, "manager_url": down}, toml)
    assert code == 1 and statuses(lines)["manager"] == "FAIL" and statuses(lines)["token"] == "skip", lines
    assert "fix: start the manager" in line(lines, "manager"), lines

    home = write_codex_home(tmp_path / "codex_home", stack.upstream_port, NO_LOGIN)
    code, lines = await doctor(NODE_LOADER, {**secret, "codex_home": home}, toml)
    assert code == 1 and [s for s in statuses(lines).values() if s != "ok"] == ["FAIL"], lines
    assert f"fix: run `CODEX_HOME={home} codex login`" in line(lines, "codex login"), lines

    # The manager: its DB and the port the running manager holds.
    mgr = {"db": stack.db_path, "port": stack.manager_port, "control_token": stack.control_token}
    code, lines = await doctor(MANAGER_SETTINGS, mgr)
    assert code == 0 and "a manager already serves" in line(lines, "listen"), lines
    code, lines = await doctor(MANAGER_SETTINGS, {**mgr, "port": stack.upstream_port})
    assert code == 1 and "taken by another program" in line(lines, "listen") and "fix: " in line(lines, "listen")
    code, lines = await doctor(MANAGER_SETTINGS, {**mgr, "db": tmp_path / "no" / "such" / "folder" / "m.sqlite3"})
    assert code == 1 and statuses(lines)["db"] == "FAIL" and "fix: " in line(lines, "db"), lines

    # The bot: the settings it runs with, then a wrong control token and a wrong bot token.
    bot = {k: v for k, v in stack.bot_settings.items() if k in BOT_LOADER.fields}
    code, lines = await doctor(BOT_LOADER, bot)
    assert code == 0 and set(statuses(lines).values()) == {"ok"}, lines
    code, lines = await doctor(BOT_LOADER, {**bot, "control_token": "ctl_wrong"})
    assert code == 1 and statuses(lines)["control token"] == "FAIL" and "control_token" in line(lines, "control token")
    code, lines = await doctor(BOT_LOADER, {**bot, "telegram_token": "123:wrong"})
    assert code == 1 and "Telegram refused the bot token" in line(lines, "telegram"), lines
    assert "123:wrong" not in "\n".join(lines)


# ---- U-04 ----------------------------------------------------------------------------------------

@pytest.mark.case("U-04")
async def test_task_lifecycle_in_node_log(stack: Stack, tg: FakeTelegram) -> None:
    """one turn followed from the manager's log to the node's by trace_id: received, turn started, codex's
    retry and error notices, final"""
    node_id = new_id("u04")
    proc = await stack.add_node(node_id, provider=RETRYING)
    failed = await stack.result(Api.DISPATCH, {"node_id": node_id, "prompt": "u04 [[mock:http=503]]", "timeout": 60})
    assert failed["error_kind"] == "upstream_error", failed
    then = await stack.result(Api.DISPATCH, {"node_id": node_id, "prompt": "u04 again", "timeout": 60,
                                             "thread_id": failed["thread_id"]})
    assert then["ok"], then
    for task, trail in ((failed, stack.trail[-2]), (then, stack.trail[-1])):
        # The manager's log names the task's trace_id (the caller's X-Trace-Id) ...
        assigned = [f for f in map(log_fields, stack.procs["manager"].log_lines("task_assigned"))
                    if f["task_id"] == task["task_id"]]
        assert [f["trace_id"] for f in assigned] == [trail["trace_id"]], assigned
        # ... and the node's log follows that turn by it.
        lines = [f for f in map(log_fields, proc.log_lines()) if f.get("trace_id") == trail["trace_id"]]
        ops = [f["op"] for f in lines]
        assert ops[:2] == ["task_received", "turn_started"] and ops[-1] == "task_final", ops
        assert all(f["task_id"] == task["task_id"] for f in lines), lines
        started, final = lines[1], lines[-1]
        assert started["thread_id"] == final["thread_id"] == task["thread_id"], lines
        assert started["turn_id"] == final["turn_id"] and started["turn_id"], lines
        assert final["ok"] == str(task["ok"]), final
    failure = [f for f in map(log_fields, proc.log_lines()) if f.get("task_id") == failed["task_id"]]
    retries = [f for f in failure if f["op"] == "codex_retry"]
    assert len(retries) == RETRYING["stream_max_retries"], failure
    assert all("503" in f["details"] and f["turn_id"] == failure[1]["turn_id"] for f in retries), retries
    [gave_up] = [f for f in failure if f["op"] == "codex_error"]
    assert "503" in gave_up["error"] and failure[-1]["error_kind"] == "upstream_error", failure
    proc.terminate()
