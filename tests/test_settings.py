"""The one settings loader: precedence, secrets from files, one naming scheme, clear errors, complete --help."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from runtime import __version__
from runtime.bot.config import SETTINGS as BOT
from runtime.manager.config import SETTINGS as MANAGER
from runtime.node.config import SETTINGS as NODE
from runtime.settings import EXIT_CONFIG, ConfigError, Loader

SERVICES = {"manager": MANAGER, "node": NODE, "bot": BOT}
REQUIRED = {"manager": ["--control-token", "ctl"], "node": ["--node-id", "n1", "--token", "tok"],
            "bot": ["--telegram-token", "1:tg", "--control-token", "ctl"]}
SECRETS = {"manager": {"control_token"}, "node": {"token", "transcribe_api_key"},
           "bot": {"telegram_token", "control_token", "webhook_secret"}}


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return str(path)


def run(service: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CODEX_RELAY_", "CODEX_NODE_"))}
    return subprocess.run([sys.executable, "-m", f"runtime.{service}.main", *argv], capture_output=True, text=True,
                          timeout=60, check=False, env={**clean, **(env or {})})


def test_precedence_is_flag_then_environment_then_file_then_default(tmp_path: Path) -> None:
    path = toml(tmp_path, 'node_id = "n1"\ntoken = "tok"\nmax_pending = 3\nrpc_timeout = 7\nbackoff_max = 4\n')
    env = {"CODEX_RELAY_NODE_RPC_TIMEOUT": "8", "CODEX_RELAY_NODE_BACKOFF_MAX": "5"}
    config = NODE.load(["--config", path, "--backoff-max", "6"], env)
    assert config.max_pending == 3          # file over default
    assert config.rpc_timeout == 8.0        # environment over file
    assert config.backoff_max == 6.0        # flag over environment
    assert config.task_timeout == 300.0     # default
    assert NODE.load([], {**env, "CODEX_RELAY_NODE_CONFIG": path}).max_pending == 3  # the file named by env


def test_every_service_uses_one_naming_scheme() -> None:
    loader: Loader[Any]
    for service, loader in SERVICES.items():
        env = {loader.env(name): str(loader.fields[name].default) for name in loader.fields
               if not loader.fields[name].secret and name not in ("allowed_users", "admin_users")}
        env["CODEX_RELAY_" + service.upper() + "_LOG_LEVEL"] = "debug"
        assert loader.load(REQUIRED[service], env).log_level == "debug"
    assert MANAGER.load(["--control-token", "c"], {"CODEX_RELAY_MANAGER_PORT": "9001"}).port == 9001
    assert BOT.load(REQUIRED["bot"], {"CODEX_RELAY_BOT_ALLOWED_USERS": "1, 2"}).allowed_users == frozenset({1, 2})


def test_types_convert_from_every_source(tmp_path: Path) -> None:
    path = toml(tmp_path, "allowed_users = [11, 12]\nadmin_users = \"11\"\nsend_attempts = 2\n")
    config = BOT.load([*REQUIRED["bot"], "--config", path, "--request-timeout", "2.5"], {})
    assert config.allowed_users == frozenset({11, 12}) and config.admin_users == frozenset({11})
    assert config.send_attempts == 2 and config.request_timeout == 2.5
    # The rest of the runtime reads these exact fields and types.
    assert isinstance(config.allowed_users, frozenset) and isinstance(config.request_timeout, float)


def test_secrets_come_from_files_without_their_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "tg").write_text("1:from-env-file\n")
    (tmp_path / "ctl").write_text("from-flag-file\n")
    (tmp_path / "hook").write_text("from-toml-file")
    path = toml(tmp_path, f'webhook_secret_file = "{tmp_path / "hook"}"\n')
    config = BOT.load(["--config", path, "--control-token-file", str(tmp_path / "ctl")],
                      {"CODEX_RELAY_BOT_TELEGRAM_TOKEN_FILE": str(tmp_path / "tg")})
    assert (config.telegram_token, config.control_token, config.webhook_secret) == (
        "1:from-env-file", "from-flag-file", "from-toml-file")
    # A file is one more way to give the value in its layer: a flag still wins over an environment file.
    assert BOT.load(["--telegram-token", "1:flag", "--control-token", "c"],
                    {"CODEX_RELAY_BOT_TELEGRAM_TOKEN_FILE": str(tmp_path / "tg")}).telegram_token == "1:flag"
    for service, loader in SERVICES.items():
        assert {n for n, f in loader.fields.items() if f.secret} == SECRETS[service]
        node_id = ["--node-id", "n1"] if service == "node" else []
        config = loader.load([*node_id, *(f"--{n.replace('_', '-')}-file={tmp_path / 'ctl'}" for n in SECRETS[service])],
                             {})
        assert all(getattr(config, n) == "from-flag-file" for n in SECRETS[service])
        assert "from-flag-file" not in repr(config)


def test_secrets_stay_out_of_errors_and_help(tmp_path: Path) -> None:
    path = toml(tmp_path, "token = 12345678\n")
    with pytest.raises(ConfigError) as err:
        NODE.load(["--config", path, "--node-id", "n1"], {})
    assert "token" in err.value.error and "12345678" not in err.value.error + err.value.fix
    with pytest.raises(ConfigError) as err:
        NODE.load(["--node-id", "n1", "--tokn", "crt_secret"], {})
    assert "--tokn" in err.value.error and "crt_secret" not in err.value.error + err.value.fix
    out = run("manager", "--help", env={"CODEX_RELAY_MANAGER_CONTROL_TOKEN": "ctl_in_env"})
    assert out.returncode == 0 and "ctl_in_env" not in out.stdout


@pytest.mark.parametrize(("service", "argv", "env", "needles"), [
    ("node", ["--node-id", "n1", "--token", "t", "--max-pending", "0"], {},
     ["`max_pending` must be an integer >= 1", "--max-pending", "CODEX_RELAY_NODE_MAX_PENDING"]),
    ("node", ["--node-id", "n1", "--token", "t"], {"CODEX_RELAY_NODE_EVENT_LOOP": "trio"},
     ["`event_loop` must be one of uvloop, asyncio, got 'trio' (from CODEX_RELAY_NODE_EVENT_LOOP)"]),
    ("node", ["--node-id", "n1"], {}, ["missing required setting `token`", "CODEX_RELAY_NODE_TOKEN_FILE"]),
    ("node", ["--node-id", "n1", "--token", "t"], {"CODEX_NODE_MAX_PENDING": "3"},
     ["CODEX_NODE_MAX_PENDING is no longer read", "rename it CODEX_RELAY_NODE_MAX_PENDING"]),
    ("manager", ["--control-token", "c", "--offline-timeout", "5"], {},
     ["offline_timeout (5 s) must be longer than heartbeat_interval (5 s)", "--offline-timeout"]),
    ("manager", ["--control-token", "c", "--gc-interval", "-1"], {}, ["`gc_interval` must be a number >= 0"]),
    ("manager", ["--control-token", "c"], {"CODEX_RELAY_MANAGER_PROT": "1"},
     ["unknown environment variable CODEX_RELAY_MANAGER_PROT"]),
    ("bot", ["--telegram-token", "1:t", "--control-token", "c"], {"CODEX_RELAY_BOT_ALLOWED_USERS": "1,bob"},
     ["`allowed_users` must be comma-separated integers", "got '1,bob'"]),
])
def test_a_bad_setting_fails_with_one_structured_line_and_exit_2(service: str, argv: list[str], env: dict[str, str],
                                                                  needles: list[str]) -> None:
    out = run(service, *argv, env=env)
    assert out.returncode == EXIT_CONFIG, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "op=startup_failed" in lines[0] and "fix=" in lines[0] and "exit_code=2" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_bad_config_file_names_the_file(tmp_path: Path) -> None:
    for text, needle in [("[oops\n", "cannot read config file"), ("max_pendng = 2\n", "unknown setting(s)"),
                         ('max_pending = "many"\n', "`max_pending` must be an integer >= 1")]:
        with pytest.raises(ConfigError) as err:
            NODE.load(["--config", toml(tmp_path, text), "--node-id", "n", "--token", "t"], {})
        assert needle in err.value.error and str(tmp_path) in err.value.error


@pytest.mark.parametrize("service", SERVICES)
def test_help_lists_every_setting_with_type_default_and_env(service: str) -> None:
    loader: Loader[Any] = SERVICES[service]
    out = run(service, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for name, field in loader.fields.items():
        assert f"--{name.replace('_', '-')} " in text, name
        assert loader.env(name) in text and field.meta.description in text and field.expected() in text, name
        if field.secret:
            assert f"--{name.replace('_', '-')}-file" in text and f"{loader.env(name)}_FILE" in text
    assert "--config FILE" in text and "a flag wins over the environment" in text
    assert len(loader.fields) == len(dataclasses.fields(loader.cls))


@pytest.mark.parametrize("service", SERVICES)
def test_version_comes_from_the_package(service: str) -> None:
    out = run(service, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"codex-relay-{service} {__version__}"
    assert __version__ == version("codex-relay")
