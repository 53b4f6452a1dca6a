"""``gradaccum finetune --config FILE``: JSON or TOML settings, flags win, one-line errors."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradaccum.cli.finetune import resolve_config
from gradaccum.cli.main import build_parser, main
from gradaccum.errors import UserError


def settings_of(*argv: str) -> dict:
    return resolve_config(build_parser().parse_args(["finetune", "--out", "o", *argv]))


def test_toml_and_json_set_flags_and_the_command_line_wins(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'seed = 5\nglobal_batch = 16\nmicro_batch = 4\nmethod = "full"\nresume = true\n'
    )
    config = settings_of("--config", str(toml), "--seed", "0")  # 0 is the default: still wins
    assert (config["seed"], config["global_batch"], config["micro_batch"]) == (0, 16, 4)
    assert config["method"] == "full" and config["lr"] == 5e-5
    args = build_parser().parse_args(["finetune", "--config", str(toml), "--out", "o"])
    resolve_config(args)
    assert args.resume is True
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"lr": 1e-3, "clip": "micro:1.0", "memory_budget": None}))
    config = settings_of("--config", str(js), "--clip", "none")
    assert (config["lr"], config["clip"], config["memory_budget"]) == (1e-3, "none", None)
    assert settings_of()["global_batch"] == 8  # no file: the defaults


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", "globl_batch = 8", "unknown key 'globl_batch'; did you mean 'global_batch'?"),
        ("a.toml", 'global_batch = "eight"', "'global_batch' must be an integer, got 'eight'"),
        ("a.json", '{"global_batch": true}', "'global_batch' must be an integer, got True"),
        ("a.toml", 'method = "half"', "'method' must be one of lora, full, got 'half'"),
        ("a.toml", "lr = [1]", "'lr' must be a number, got [1]"),
        ("a.toml", "global_batch = 0", "'global_batch' in {path} has an impossible value"),
        ("a.json", '{"lr": NaN}', "'lr' in {path} has an impossible value"),
        ("a.json", '{"lr": 1e999}', "'lr' in {path} has an impossible value"),
        ("a.toml", "seed = -1", "'seed' in {path} has an impossible value"),
        ("a.toml", 'micro_batch = "some"', "'micro_batch' in {path} 'some': give a positive"),
        ("a.toml", "seed = ", "is not valid TOML: Invalid value (at end of document)"),
        (
            "a.json",
            '{"seed": 1,}',
            "is not valid JSON: Expecting property name enclosed in double quotes: line 1",
        ),
        ("a.json", '{"seed": 1, "seed": 2}', "is not valid JSON: key 'seed' appears twice"),
        ("a.json", "[1, 2]", "the top level must be an object of settings"),
        ("a.yaml", "seed: 1", "use a .json or .toml file"),
        ("a.json", b'{"model": "\xff"}', "is not UTF-8 text (byte 11)"),
        ("a.toml", 'data = "a\\u0000b"', "'data' must not contain a NUL character"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["finetune", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradaccum: error: ")
    assert message.format(path=path) in err[0]
    assert not (tmp_path / "o").exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="cannot read config file .*nope.toml"):
        settings_of("--config", str(tmp_path / "nope.toml"))


KEYS = ["global_batch", "micro_batch", "lr", "seed", "method", "clip", "data", "resume", "x"]
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["auto", "full", "lora", "none", "global:1", "3GB", "4"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=5,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=12), VALUES, max_size=5))
def test_fuzzed_json_config_is_accepted_or_one_clean_line(tmp_path, data):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(data))
    try:
        config = settings_of("--config", str(path))
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 400
        return
    for key in set(data) & {"global_batch", "seed", "method", "clip", "lr"}:
        assert config[key] == data[key] or (key == "lr" and data[key] is None)
    assert config["lr"] > 0 and math.isfinite(config["lr"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_fuzzed_toml_bytes_are_accepted_or_one_clean_line(tmp_path, raw):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)
    try:
        settings_of("--config", str(path))
    except UserError as error:
        assert "\n" not in str(error) and len(str(error)) < 400
