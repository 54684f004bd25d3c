"""One settings loader for the manager, the node and the bot: flag > environment > TOML file > default.

A service declares its settings once, as a frozen dataclass whose fields carry `setting(...)`; the flags,
the environment names, `--help` and every error text are generated from that declaration.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Protocol, TypeVar, get_args, get_origin, get_type_hints

import msgspec

from runtime import __version__, logfmt
from runtime.logfmt import log

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

EXIT_CONFIG = 2  # unreadable file, unknown setting, bad value, missing required setting
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(Exception):
    """A startup failure the operator can fix: what is wrong, what to do, and the documented exit code."""

    def __init__(self, error: str, fix: str, exit_code: int = EXIT_CONFIG) -> None:
        super().__init__(error)
        self.error, self.fix, self.exit_code = error, fix, exit_code


def setting(description: str, *, secret: bool = False, required: bool = False, choices: Sequence[str] = (),
            gt: float | None = None, ge: float | None = None, le: float | None = None) -> msgspec.Meta:
    """A field's one-line meaning and its constraints: `Annotated[int, setting("...", ge=1)]`."""
    constraints: dict[str, Any] = {k: v for k, v in (("gt", gt), ("ge", ge), ("le", le)) if v is not None}
    if choices:
        constraints["pattern"] = "^(" + "|".join(map(re.escape, choices)) + ")$"
    meta: msgspec.Meta = msgspec.Meta(description=description, **constraints,
                                      extra={"secret": secret, "required": required, "choices": tuple(choices)})
    return meta


def startup_failed(logger: logging.Logger, err: ConfigError) -> NoReturn:
    log(logger, logging.ERROR, "startup_failed", error=err.error, fix=err.fix, exit_code=err.exit_code)
    sys.exit(err.exit_code)


class HasLogLevel(Protocol):
    @property
    def log_level(self) -> str: ...


C = TypeVar("C", bound=HasLogLevel)


def state_dir(given: str, name: str) -> str:
    """A service's state directory: the one given, else $XDG_STATE_HOME (or ~/.local/state)/codex-relay/<name>."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.abspath(given or os.path.join(base, "codex-relay", name))


def load_or_exit(load: Callable[[Sequence[str] | None], C], argv: Sequence[str] | None,
                 logger: logging.Logger) -> C:
    """A service's settings, with its logging set to their level; a bad one ends the process with one line."""
    logfmt.setup()
    try:
        config = load(argv)
    except ConfigError as err:
        startup_failed(logger, err)
    logfmt.setup(config.log_level)
    return config


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    type: Any            # the Annotated type msgspec converts to, constraints included
    base: Any            # the bare type, for help texts
    meta: msgspec.Meta
    default: Any

    @property
    def secret(self) -> bool:
        return bool(self.meta.extra and self.meta.extra["secret"])

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return get_origin(self.base) in (frozenset, set, list, tuple)

    def expected(self) -> str:
        """What a valid value looks like, in words."""
        choices = self.meta.extra["choices"] if self.meta.extra else ()
        if choices:
            return "one of " + ", ".join(choices)
        names = {str: "text", int: "an integer", float: "a number", bool: "true or false"}
        if self.is_list:
            if get_args(self.base)[0] is str:
                return "comma-separated paths (a TOML list in the file), e.g. /srv/a,/srv/b"
            return "comma-separated integers (a TOML list in the file), e.g. 123,456"
        bounds = [f"{op} {v:g}" for op, v in ((">", self.meta.gt), (">=", self.meta.ge), ("<=", self.meta.le))
                  if v is not None]
        return " ".join([names.get(self.base, str(self.base)), ", ".join(bounds)]).strip()

    def metavar(self) -> str:
        choices = self.meta.extra["choices"] if self.meta.extra else ()
        if choices:
            return "{" + ",".join(choices) + "}"
        if self.is_list:
            return "PATH,..." if get_args(self.base)[0] is str else "ID,..."
        return {int: "INT", float: "NUM"}.get(self.base, "TEXT")

    def shown_default(self) -> str:
        if self.meta.extra and self.meta.extra["required"]:
            return "required"
        if self.secret:
            return "none"
        if isinstance(self.default, (frozenset, tuple)):
            return ",".join(map(str, sorted(self.default))) or "none"
        return repr(self.default) if self.default == "" else str(self.default)


class Loader(Generic[T]):
    """Reads one service's settings into `cls` from `--config FILE`, CODEX_RELAY_<SERVICE>_<NAME> and `--<name>`."""

    def __init__(self, cls: type[T], service: str, description: str, legacy_env_prefix: str = "") -> None:
        self.cls, self.service, self.description = cls, service, description
        self.prog = f"codex-relay-{service}"
        self.env_prefix = f"CODEX_RELAY_{service.upper()}_"
        # The prefix this service read before the one scheme; such a variable is refused with its new name.
        self.legacy_env_prefix = legacy_env_prefix
        hints = get_type_hints(cls, include_extras=True)
        self.fields: dict[str, _Field] = {}
        for f in dataclasses.fields(cls):
            base, *extras = get_args(hints[f.name])
            if f.repr and any(isinstance(m, msgspec.Meta) and m.extra and m.extra["secret"] for m in extras):
                raise TypeError(f"{cls.__name__}.{f.name} is a secret: declare it with field(repr=False)")
            meta = next(m for m in extras if isinstance(m, msgspec.Meta))
            self.fields[f.name] = _Field(f.name, hints[f.name], base, meta, f.default)

    def env(self, name: str) -> str:
        return self.env_prefix + name.upper()

    def where(self, name: str) -> str:
        """Every place `name` can be set, for error texts."""
        return f"`{name}` ({self.fields[name].flag}, {self.env(name)} or the key {name} in the --config file)"

    # ---- the command line and its help -----------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        p = _Parser(prog=self.prog, description=self.description, allow_abbrev=False, epilog=self._epilog(),
                    formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=40, width=120))
        p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
        p.add_argument("--config", metavar="FILE",
                       help=f"TOML file of settings, keys as named below (env {self.env('config')})")
        for f in self.fields.values():
            help_text = f"{f.meta.description} [{f.expected()}; default {f.shown_default()}; env {self.env(f.name)}]"
            p.add_argument(f.flag, dest=f.name, metavar=f.metavar(), help=help_text.replace("%", "%%"))
            if f.secret:
                p.add_argument(f.flag + "-file", dest=f.name + "_file", metavar="PATH",
                               help=f"read {f.name} from this file (env {self.env(f.name)}_FILE)")
        return p

    def _epilog(self) -> str:
        secrets = [f.name for f in self.fields.values() if f.secret]
        return (f"Each setting <name> is the key <name> in the --config file, the variable "
                f"{self.env_prefix}<NAME> and the flag --<name-with-dashes>;\n"
                "a flag wins over the environment, which wins over the file, which wins over the default.\n"
                f"Secrets ({', '.join(secrets)}) can also be read from a file: the key <name>_file, "
                f"{self.env_prefix}<NAME>_FILE or --<name>-file\n(one trailing newline is dropped).")

    # ---- loading -------------------------------------------------------------------------------
    def load(self, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> T:
        env = os.environ if environ is None else environ
        args, extra = self.parser().parse_known_args(argv)
        if extra:  # only the flag names: a mistyped secret flag must not echo the secret that follows it
            unknown = [a.split("=", 1)[0] for a in extra if a.startswith("-")] or ["a value without a flag"]
            raise ConfigError(f"unknown command-line argument(s): {', '.join(unknown)}", f"see {self.prog} --help")
        self._refuse_unknown_env(env)
        raw: dict[str, tuple[Any, str]] = {}  # name -> (value, where it came from); later layers win
        config_file = args.config or env.get(self.env("config"))
        if config_file:
            raw.update(self._from_file(config_file))
        raw.update(self._layer({n: env.get(self.env(n)) for n in self.fields},
                               {n: env.get(self.env(n) + "_FILE") for n in self.fields},
                               self.env, lambda n: self.env(n) + "_FILE"))
        raw.update(self._layer({n: getattr(args, n) for n in self.fields},
                               {n: getattr(args, n + "_file", None) for n in self.fields},
                               lambda n: self.fields[n].flag, lambda n: self.fields[n].flag + "-file"))
        values = {name: self._convert(self.fields[name], value, source) for name, (value, source) in raw.items()}
        for f in self.fields.values():
            if f.meta.extra and f.meta.extra["required"] and not values.get(f.name):
                also = f"; or read it from a file with {self.env(f.name)}_FILE or {f.flag}-file" if f.secret else ""
                raise ConfigError(f"missing required setting `{f.name}`", f"set {self.where(f.name)}{also}")
        return self.cls(**values)

    def _refuse_unknown_env(self, env: Mapping[str, str]) -> None:
        known = {self.env("config")} | {self.env(n) for n in self.fields}
        known |= {self.env(n) + "_FILE" for n, f in self.fields.items() if f.secret}
        for var in sorted(env):
            if var.startswith(self.env_prefix) and var not in known:
                raise ConfigError(f"unknown environment variable {var}",
                                  f"unset it or use a name from {self.prog} --help")
            if self.legacy_env_prefix and var.startswith(self.legacy_env_prefix):
                name = var.removeprefix(self.legacy_env_prefix).lower()
                if name in self.fields:
                    raise ConfigError(f"{var} is no longer read: settings of the {self.service} are "
                                      f"{self.env_prefix}<NAME> now", f"rename it {self.env(name)}")

    def _from_file(self, path: str) -> dict[str, tuple[Any, str]]:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}", "pass a readable TOML file to --config") from None
        known = set(self.fields) | {n + "_file" for n, f in self.fields.items() if f.secret}
        if unknown := sorted(set(data) - known):
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}",
                              f"remove them; known settings are: {', '.join(sorted(known))}")
        return self._layer({n: data.get(n) for n in self.fields}, {n: data.get(n + "_file") for n in self.fields},
                           lambda n: f"`{n}` in {path}", lambda n: f"`{n}_file` in {path}")

    def _layer(self, given: Mapping[str, Any], files: Mapping[str, Any], source: Callable[[str], str],
               file_source: Callable[[str], str]) -> dict[str, tuple[Any, str]]:
        """One source's values; a secret may come as `<name>_file`, a path whose contents are the value."""
        out: dict[str, tuple[Any, str]] = {}
        for name, f in self.fields.items():
            value, path = given.get(name), files.get(name) if f.secret else None
            here = source(name)
            if value is not None and path is not None:
                raise ConfigError(f"`{name}` is given both as {here} and as {file_source(name)}",
                                  "keep only one of the two")
            if path is not None:
                here = file_source(name)
                value = _read_secret(name, str(path), here)
            if value is not None:
                out[name] = (value, here)
        return out

    def _convert(self, f: _Field, value: Any, source: str) -> Any:
        parts = [p.strip() for p in value.split(",") if p.strip()] if f.is_list and isinstance(value, str) else value
        try:
            return msgspec.convert(parts, f.type, strict=False)
        except msgspec.ValidationError:
            got = "" if f.secret else f", got {value!r}"
            raise ConfigError(f"`{f.name}` must be {f.expected()}{got} (from {source})",
                              f"set {source} to {f.expected()}; the setting is {self.where(f.name)}") from None


def _read_secret(name: str, path: str, source: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read().removesuffix("\n").removesuffix("\r")
    except OSError as exc:
        raise ConfigError(f"cannot read `{name}` from {path} ({source}): {exc.strerror}",
                          "point it at a readable file that holds only the secret") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read `{name}` from {path} ({source}): not UTF-8 text",
                          "point it at a readable file that holds only the secret") from None
    if not text:
        raise ConfigError(f"`{name}` file {path} ({source}) is empty", "write the secret into the file")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit 2 without a log line
        raise ConfigError(f"bad command line: {message}", f"see {self.prog} --help")
