"""Locust users for bursts against the manager's control API. Locust runs this only in its own processes
(`harness burst`, or `locust -f` by hand): importing locust monkey-patches with gevent.

Each user is one chat on one node: it sends Codex turns, lists threads, and reads the servers list.
Business failures (`result.ok: false`) count as failures, named by their error_kind. With
RELAY_HISTORY_DIR set, every turn also goes into a history file per process, for the exactly-once checker.

Settings come from the environment: RELAY_CONTROL_TOKEN (required), RELAY_NODES (comma-separated
node_ids, required), RELAY_OP_TIMEOUT (seconds, default 20), RELAY_HISTORY_DIR (optional).
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task

from harness.history.history import History, Op, Outcome
from runtime.protocol import Api, new_id

TOKEN = os.environ.get("RELAY_CONTROL_TOKEN", "")
NODES = [n for n in os.environ.get("RELAY_NODES", "").split(",") if n]
OP_TIMEOUT = float(os.environ.get("RELAY_OP_TIMEOUT", "20"))
HISTORY = History(Path(os.environ["RELAY_HISTORY_DIR"]) / f"history-{os.getpid()}.jsonl") \
    if os.environ.get("RELAY_HISTORY_DIR") else None
ANSWER_GRACE_S = 10.0
_next_node = itertools.count()


@events.init.add_listener
def _check(environment: Any, **_: Any) -> None:
    if not TOKEN or not NODES:
        raise SystemExit("locustfile: set RELAY_CONTROL_TOKEN and RELAY_NODES (see harness/load/locustfile.py)")


class ChatUser(HttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.node = NODES[next(_next_node) % len(NODES)]
        self.chat = new_id("burst")
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    def _post(self, path: str, body: dict[str, Any], name: str, trace_id: str) -> tuple[Outcome, dict[str, Any]]:
        """(outcome, result); marks the request failed in Locust's stats when the business failed."""
        with self.client.post(path, json=body, name=name, catch_response=True, timeout=OP_TIMEOUT + ANSWER_GRACE_S,
                              headers={**self.headers, "X-Trace-Id": trace_id}) as resp:
            try:
                env = resp.json()
            except ValueError:
                resp.failure(f"no JSON answer (HTTP {resp.status_code})")
                return "unknown", {}
            result = env.get("result") or {}
            if resp.status_code != 200 or not env.get("ok"):
                resp.failure(f"error_kind={env.get('error_kind')} HTTP {resp.status_code}")
                return "fail", {"error_kind": env.get("error_kind")}
            if not result.get("ok"):
                resp.failure(f"error_kind={result.get('error_kind')}")
                return "fail", result
            resp.success()
            return "ok", result

    @task(6)
    def turn(self) -> None:
        op = Op(new_id("op"), "dispatch_text", self.node, time.time(), trace_id=new_id("tr"), task_id=new_id("task"))
        op.prompt = f"burst {op.task_id}"
        body = {"chat_key": self.chat, "node_id": self.node, "text": op.prompt, "timeout": OP_TIMEOUT,
                "task_id": op.task_id, "steer": False}  # a turn of its own, never joined to a running one
        try:
            op.outcome, result = self._post(Api.DISPATCH_TEXT, body, "dispatch_text", op.trace_id or "")
            op.error_kind, op.retriable = result.get("error_kind"), result.get("retriable")
            if op.outcome == "ok" and result.get("text") != f"mock reply: {op.prompt}":
                op.outcome = "fail"
                op.error_kind = "wrong_result"
        finally:
            op.end = time.time()
            if HISTORY is not None:
                HISTORY.add(op)

    @task(3)
    def thread_list(self) -> None:
        self._post(Api.APPSERVER, {"node_id": self.node, "method": "thread/list", "params": {"limit": 5},
                                   "timeout": OP_TIMEOUT}, "appserver thread/list", new_id("tr"))

    @task(1)
    def servers(self) -> None:
        self.client.get(Api.SERVERS, headers=self.headers, name="servers", timeout=OP_TIMEOUT)
