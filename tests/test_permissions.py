"""The permission matrix (runtime/bot/permissions.py) is the only source: every command and button the bot registers
has its row and takes its check from it, the README shows it as it is, and /help marks the admins' commands."""
from __future__ import annotations

import re

from harness.stack import paths
from runtime.bot import commands, handlers, permissions, render
from runtime.bot.permissions import Role

README = paths.REPO_ROOT / "README.md"
BLOCK = re.compile(r"<!-- permissions: begin -->\n(.*?)\n<!-- permissions: end -->", re.S)


def test_readme_shows_the_matrix() -> None:
    """the README's permission table is the matrix, printed"""
    shown = BLOCK.search(README.read_text())
    assert shown is not None, "README.md has no <!-- permissions: begin/end --> block"
    assert shown.group(1) == permissions.table(), (
        "README.md's permission table differs from runtime/bot/permissions.py: paste the output of "
        "`.venv/bin/python -m runtime.bot.permissions` between the permissions markers")


def test_every_handler_has_its_row() -> None:
    """each registered command and button has a row, takes its rule from it, and no row is left without one"""
    assert handlers.COMMAND_MODULES  # the bot's handlers import every module that registers commands (models, threads)
    assert set(commands.COMMANDS) == set(permissions.COMMANDS)
    assert {c.name: c.rule for c in commands.COMMANDS.values()} == permissions.COMMANDS
    assert {b.prefix: b.rule for b in commands.BUTTONS.values()} == permissions.BUTTONS


def test_admin_only_per_product() -> None:
    """config writes, token and user management are admins' only; strangers may use nothing"""
    assert {n for n, r in permissions.COMMANDS.items() if r.who == Role.ADMIN} == {"config_value_write", "token", "user"}
    rules = [*permissions.COMMANDS.values(), *permissions.BUTTONS.values(), permissions.TEXT, permissions.OTHER]
    assert all(r.who > Role.STRANGER for r in rules)


def test_help_marks_admin_commands() -> None:
    """/help lists every command but /start, and says `(admins)` on exactly the admins' ones"""
    lines = {ln.split()[0].removeprefix("/").rstrip(":"): ln for ln in render.HELP.splitlines() if ln.startswith("/")}
    assert set(lines) == set(permissions.COMMANDS) - {"start", "help"}
    for name, line in lines.items():
        assert ("(admins)" in line) == (permissions.COMMANDS[name].who == Role.ADMIN), line
