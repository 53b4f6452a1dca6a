"""``--config FILE``: a command's settings from a JSON or TOML file; command-line flags win.

Keys are the command's flags with underscores (``global_batch = 8``). Every flag's argparse
default is replaced by a marker, so a flag given on the command line (even at its default
value) is told apart from one left unset; unset flags take the file's value, then the default.
A bad file is one line naming the file and the key: unknown keys, wrong types, bad choices.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradaccum.errors import UserError

MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a bigger file is a mistake


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()


@dataclass(frozen=True)
class Flag:
    """What a config value for one flag must be."""

    kind: type  # bool (a switch), int, float or str
    default: Any
    choices: tuple[Any, ...] | None


def defer_defaults(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and mark every other flag unset until ``fill_settings`` runs."""
    parser.add_argument("--config", default=None, help="JSON or TOML file of settings")
    flags = {
        a.dest: Flag(
            bool if isinstance(a, argparse._StoreTrueAction) else a.type or str,
            a.default,
            tuple(a.choices) if a.choices else None,
        )
        for a in parser._actions
        if a.option_strings and a.dest not in ("help", "config")
    }
    parser.set_defaults(**dict.fromkeys(flags, UNSET), flags=flags, from_file={})


def fill_settings(args: argparse.Namespace) -> None:
    """Give each unset flag the config file's value, else its default; remember the origin."""
    values = read_config_file(Path(args.config), args.flags) if args.config else {}
    for dest, flag in args.flags.items():
        if getattr(args, dest) is UNSET:
            if dest in values:
                setattr(args, dest, values[dest])
                args.from_file[dest] = args.config
            else:
                setattr(args, dest, flag.default)


def origin(args: argparse.Namespace, flag: str) -> str:
    """How to name a setting in an error: ``--lr`` or ``'lr' in run.toml``."""
    key = flag.removeprefix("--").replace("-", "_")
    return f"{key!r} in {args.from_file[key]}" if key in args.from_file else flag


def read_config_file(path: Path, flags: dict[str, Flag]) -> dict[str, Any]:
    """The settings a .json or .toml file holds, checked against ``flags``."""
    data = _parse(path)
    values = {}
    for key, value in data.items():
        if key not in flags:
            close = difflib.get_close_matches(key.replace("-", "_"), flags, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(
                f"config file {path}: unknown key {_short(key)}{hint} "
                "(keys are the flags, with underscores)"
            )
        values[key] = _check(path, key, value, flags[key])
    return values


def _parse(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise UserError(f"config file {path}: use a .json or .toml file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"config file {path} is over {MAX_BYTES} bytes: is it the right file?")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        kind = "TOML" if suffix == ".toml" else "JSON"
        raise UserError(f"config file {path} is not valid {kind}: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: the top level must be an object of settings")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"key {_short(key)} appears twice")
    return dict(pairs)


def _check(path: Path, key: str, value: Any, flag: Flag) -> Any:
    """The value converted to the flag's type, or a UserError naming the key."""
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str | int) and not isinstance(v, bool),
    }[flag.kind]
    if value is None and flag.default is None:
        return None
    if not ok(value):
        want = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise UserError(
            f"config file {path}: {key!r} must be {want[flag.kind]}, got {_short(value)}"
        )
    try:
        value = flag.kind(value)
    except OverflowError:
        raise UserError(f"config file {path}: {key!r} is too large") from None
    if isinstance(value, str) and "\x00" in value:
        raise UserError(f"config file {path}: {key!r} must not contain a NUL character")
    if flag.choices and value not in flag.choices:
        raise UserError(
            f"config file {path}: {key!r} must be one of {', '.join(map(str, flag.choices))}, "
            f"got {_short(value)}"
        )
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
