"""Settings: flags > LOCALRANK_* env > TOML file > defaults, with the source of every value."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localrank.cli import build_parser, main
from localrank.cli.common import settings_from_args
from localrank.config import (
    DEFAULT_MODEL,
    DEFAULT_PORT,
    Settings,
    choices,
    is_loopback_host,
    load_settings,
)
from localrank.declare import Range, record_of
from localrank.errors import ConfigError, exit_code


def write_config(home: Path, text: str) -> Path:
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    s = load_settings(environ={"LOCALRANK_HOME": str(tmp_path)})
    assert (s.host, s.port, s.model) == ("127.0.0.1", DEFAULT_PORT, DEFAULT_MODEL)
    assert s.backend == "auto"
    assert s.home == tmp_path
    assert s.sources["home"] == "env:LOCALRANK_HOME"
    assert {v for k, v in s.sources.items() if k != "home"} == {"default"}
    assert s.model_is_default
    assert s.paths.data == tmp_path / "data" and s.paths.logs == tmp_path / "logs"


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, 'port = 1111\nmodel = "from-file"\nbackend = "cpu"\nlog-format = "json"\n'
    )
    env = {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_PORT": "2222", "LOCALRANK_BACKEND": "mps"}
    s = load_settings({"port": 3333, "host": None}, env)
    assert s.port == 3333 and s.sources["port"] == "flag"
    assert s.backend == "mps" and s.sources["backend"] == "env:LOCALRANK_BACKEND"
    assert s.model == "from-file" and s.sources["model"] == f"file:{path}"
    assert s.log_format == "json" and s.sources["log_format"] == f"file:{path}"
    # A flag given as None is "not given": the default stays, with its source.
    assert s.host == "127.0.0.1" and s.sources["host"] == "default"
    assert not s.model_is_default

    s = load_settings({}, env)
    assert s.port == 2222 and s.sources["port"] == "env:LOCALRANK_PORT"


def test_home_flag_locates_the_config_file(tmp_path: Path) -> None:
    write_config(tmp_path / "a", "port = 4444\n")
    write_config(tmp_path / "b", "port = 5555\n")
    env = {"LOCALRANK_HOME": str(tmp_path / "a")}
    assert load_settings({}, env).port == 4444
    assert load_settings({"home": str(tmp_path / "b")}, env).port == 5555


def test_lists_and_empty_variables(tmp_path: Path) -> None:
    write_config(tmp_path, 'allowed_hosts = ["box.lan"]\n')
    env = {
        "LOCALRANK_HOME": str(tmp_path),
        "LOCALRANK_ALLOWED_ORIGINS": "http://localhost:3000, https://app.example",
        "LOCALRANK_MODEL": "",
    }
    s = load_settings({}, env)
    assert s.allowed_hosts == ("box.lan",)
    assert s.allowed_origins == ("http://localhost:3000", "https://app.example")
    assert s.model == DEFAULT_MODEL and s.sources["model"] == "default"  # "" means unset


def test_job_failure_timeout_from_file_and_env(tmp_path: Path) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path)}
    assert load_settings({}, env).job_failure_timeout_s == 300.0  # a few minutes
    path = write_config(tmp_path, "job_failure_timeout_s = 600\n")
    s = load_settings({}, env)
    assert s.job_failure_timeout_s == 600.0 and s.sources["job_failure_timeout_s"] == f"file:{path}"
    env["LOCALRANK_JOB_FAILURE_TIMEOUT_S"] = "45.5"
    assert load_settings({}, env).job_failure_timeout_s == 45.5


def test_origins_of_any_scheme(tmp_path: Path) -> None:
    """Apps send their own schemes (Obsidian: app://obsidian.md); all are origins."""
    origins = "app://obsidian.md, chrome-extension://abcdefgh, http://[::1]:3000/"
    s = load_settings({}, {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_ALLOWED_ORIGINS": origins})
    assert s.allowed_origins == (
        "app://obsidian.md",
        "chrome-extension://abcdefgh",
        "http://[::1]:3000/",
    )


def test_served_model_names_from_flag_env_and_file(tmp_path: Path) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path)}
    assert load_settings({}, env).served_model_names == ()
    write_config(tmp_path, 'served_model_names = ["text-embedding-3-small", "nomic-embed-text"]\n')
    assert load_settings({}, env).served_model_names == (
        "text-embedding-3-small",
        "nomic-embed-text",
    )
    env["LOCALRANK_SERVED_MODEL_NAMES"] = "a-name, another:latest"
    assert load_settings({}, env).served_model_names == ("a-name", "another:latest")
    flagged = load_settings({"served_model_names": ["mine"]}, env)
    assert (
        flagged.served_model_names == ("mine",) and flagged.sources["served_model_names"] == "flag"
    )


def test_serve_flags_for_names_and_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path))
    args = build_parser().parse_args(
        ["serve", "--backend", "torch", "--served-model-name", "a", "--served-model-name", "b"]
    )
    s = settings_from_args(args, "served_model_names")
    assert s.backend == "torch" and s.served_model_names == ("a", "b")


def test_torch_is_a_backend(tmp_path: Path) -> None:
    """embed-rerank's BACKEND=torch: torch on its best device (see choose_backend)."""
    assert load_settings({"backend": "torch"}, {"LOCALRANK_HOME": str(tmp_path)}).backend == "torch"


@pytest.mark.parametrize(
    ("source", "name", "value", "fragment"),
    [
        ("env", "port", "eighty", "port"),
        ("env", "port", "70000", "1..65535"),
        ("flag", "backend", "gpu", "backend must be one of"),
        ("file", "log_format", '"xml"', "log_format"),
        ("file", "log_level", '"loud"', "log_level"),
        ("flag", "max_body_bytes", 0, "max_body_bytes"),
        ("env", "allowed_origins", "*", "allowed_origins"),
        ("env", "allowed_origins", "null", "allowed_origins"),
        ("env", "allowed_origins", "localhost:3000", "allowed_origins"),
        ("env", "allowed_origins", "http://*.example.com", "allowed_origins"),
        ("env", "allowed_origins", "http://localhost:3000/app", "allowed_origins"),
        ("file", "served_model_names", '["ok", " padded"]', "served_model_names"),
        ("file", "served_model_names", '[""]', "served_model_names"),
        ("file", "max_inputs", "-1", "max_inputs"),
        ("file", "no_such_setting", "1", "unknown setting"),
        ("env", "store_url", "mysql://me@db/x", "store_url must be postgresql://"),
        ("flag", "store_url", "postgresql:/host/db", "store_url"),
        ("file", "job_lease_s", "0.5", "job_lease_s"),
        ("env", "job_failure_timeout_s", "0", "job_failure_timeout_s must be 1..86400"),
        ("file", "job_failure_timeout_s", "1e6", "job_failure_timeout_s"),
        ("env", "job_failure_timeout_s", "soon", "job_failure_timeout_s"),
    ],
)
def test_bad_values_raise_config_error(
    tmp_path: Path, source: str, name: str, value: object, fragment: str
) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path)}
    flags: dict[str, object] = {}
    if source == "env":
        env[f"LOCALRANK_{name.upper()}"] = str(value)
    elif source == "flag":
        flags[name] = value
    else:
        write_config(tmp_path, f"{name} = {value}\n")
    with pytest.raises(ConfigError, match=fragment):
        load_settings(flags, env)


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "port = = 3\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_settings({}, {"LOCALRANK_HOME": str(tmp_path)})


def test_token_is_masked_in_to_dict(tmp_path: Path) -> None:
    s = load_settings({}, {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_TOKEN": "s3cret"})
    assert s.token == "s3cret"
    assert s.to_dict()["token"] == "***"
    assert "s3cret" not in json.dumps(s.to_dict())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_config_command_prints_values_and_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.startswith("LOCALRANK_")]:
        monkeypatch.delenv(name)
    path = write_config(tmp_path, "port = 9999\n")
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALRANK_TOKEN", "s3cret")
    assert main(["config", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config_file"] == str(path)
    assert out["settings"]["port"] == {"value": 9999, "source": f"file:{path}"}
    assert out["settings"]["token"] == {"value": "***", "source": "env:LOCALRANK_TOKEN"}
    assert out["settings"]["host"] == {"value": "127.0.0.1", "source": "default"}

    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "s3cret" not in text
    port_line = next(line for line in text.splitlines() if line.startswith("port "))
    assert "9999" in port_line and f"file:{path}" in port_line


def test_store_url_from_flag_env_and_file_with_the_password_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path)}
    s = load_settings({}, env)
    assert s.store_url is None and s.store_location == s.paths.database
    write_config(tmp_path, 'store_url = "postgresql://team:pw@db.internal:5433/search"\n')
    s = load_settings({}, env)
    assert s.store_location == "postgresql://team:pw@db.internal:5433/search"
    assert s.store_display == "postgresql://team:***@db.internal:5433/search"
    assert s.to_dict()["store_url"] == s.store_display and "pw" not in json.dumps(s.to_dict())
    env["LOCALRANK_STORE_URL"] = "postgres://other@/db?host=/run/pg"
    assert load_settings({}, env).store_display == "postgres://other@/db?host=/run/pg"
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path))
    args = build_parser().parse_args(["serve", "--store-url", "sqlite:///tmp/x.db"])
    s = settings_from_args(args, "store_url")
    assert s.store_url == "sqlite:///tmp/x.db" and s.sources["store_url"] == "flag"


# Every setting's bounds and choices are declared once, on the Settings field; the checks and
# the CLI's choices read them.
BOUNDED = [
    (f.attr, c)
    for f in record_of(Settings).fields
    for c in f.constraints
    if isinstance(c, Range) and f.attr != "sources"
]


@pytest.mark.parametrize(("name", "bound"), BOUNDED, ids=[n for n, _ in BOUNDED])
def test_every_declared_bound_is_checked(tmp_path: Path, name: str, bound: Range) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path)}
    lo, hi = bound.lo, bound.hi
    assert isinstance(lo, (int, float)) and (hi is None or isinstance(hi, (int, float)))
    low_ok = lo + 1 if bound.above else lo
    for beyond in ([hi + 1] if hi is not None else []) + [lo if bound.above else lo - 1]:
        with pytest.raises(ConfigError) as err:
            load_settings({name: beyond}, env)
        assert err.value.param == name and name in err.value.message
    for inside in [low_ok] + ([hi] if hi is not None else []):
        assert getattr(load_settings({name: inside}, env), name) == inside


def test_the_cli_offers_the_declared_choices() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    offered = {
        (command, action.dest): tuple(action.choices)
        for command in ("serve", "embed", "search")
        for action in sub[command]._actions
        if action.choices is not None
        and action.dest in ("backend", "dtype", "log_level", "log_format")
    }
    assert (
        offered[("serve", "dtype")]
        == choices("dtype")
        == ("auto", "float32", "float16", "bfloat16", "int8")
    )
    for (_, name), values in offered.items():
        assert values == choices(name)
    assert {name for _, name in offered} == {"backend", "dtype", "log_level", "log_format"}


# --- values a setting cannot take ---------------------------------------------------------------

NUMBERS = [f.attr for f in record_of(Settings).fields if f.kind.base == "number"]


@pytest.mark.parametrize("name", NUMBERS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_timeouts_and_intervals_must_be_finite(tmp_path: Path, name: str, value: str) -> None:
    """`LOCALRANK_IDLE_TIMEOUT_S=nan` once left idle connections open for ever (nan compares
    false with every bound): every number is finite or the configuration is refused."""
    env = {"LOCALRANK_HOME": str(tmp_path), f"LOCALRANK_{name.upper()}": value}
    with pytest.raises(ConfigError, match="finite") as err:
        load_settings({}, env)
    assert err.value.param == name


def test_finite_in_the_config_file_and_flags_too(tmp_path: Path) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path)}
    write_config(tmp_path, "idle_timeout_s = nan\n")  # TOML has nan and inf literals
    with pytest.raises(ConfigError, match="idle_timeout_s must be a finite number"):
        load_settings({}, env)
    write_config(tmp_path, "body_timeout_s = inf\n")
    with pytest.raises(ConfigError, match="body_timeout_s"):
        load_settings({}, env)
    write_config(tmp_path, "port = inf\n")  # an integer setting: a clear error, no traceback
    with pytest.raises(ConfigError, match="port"):
        load_settings({}, env)
    write_config(tmp_path, "")
    with pytest.raises(ConfigError, match="preempt_ms"):
        load_settings({"preempt_ms": float("nan")}, env)


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("On", True),
        ("false", False),
        ("0", False),
        ("no", False),
        (" off ", False),
    ],
)
def test_booleans_read_the_usual_words(tmp_path: Path, word: str, value: bool) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_PRELOAD_RERANKER": word}
    assert load_settings({}, env).preload_reranker is value


@pytest.mark.parametrize("word", ["maybe", "2", "enabled", "tru", "y"])
def test_any_other_boolean_is_an_error_not_false(tmp_path: Path, word: str) -> None:
    env = {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_PRELOAD_RERANKER": word}
    with pytest.raises(ConfigError, match="true/false, 1/0, yes/no, on/off") as err:
        load_settings({}, env)
    assert err.value.param == "preload_reranker" and repr(word) in err.value.message
    write_config(tmp_path, "preload_reranker = 2\n")
    with pytest.raises(ConfigError, match="not a boolean"):
        load_settings({}, {"LOCALRANK_HOME": str(tmp_path)})


@pytest.mark.parametrize("token", [" ", "\t", " s3cret", "s3cret ", "s3\ncret", "s3\x00cret"])
def test_a_token_no_client_could_send_is_refused(tmp_path: Path, token: str) -> None:
    """The daemon strips the credentials it receives, and a header cannot carry control
    characters: such a token would lock every client out."""
    env = {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_TOKEN": token}
    with pytest.raises(ConfigError, match="token") as err:
        load_settings({}, env)
    assert err.value.param == "token"
    ok = {"LOCALRANK_HOME": str(tmp_path), "LOCALRANK_TOKEN": "s3 cr3t-é"}
    assert load_settings({}, ok).token == "s3 cr3t-é"


def test_a_config_file_that_is_not_utf8_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command used to crash with a UnicodeDecodeError traceback; now every command says
    which file is wrong and exits with the configuration error's code (9, errors.ERROR_TABLE)."""
    path = write_config(tmp_path, "")
    path.write_bytes('model = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        load_settings({}, {"LOCALRANK_HOME": str(tmp_path)})
    assert str(path) in err.value.message and exit_code(err.value) == 9
    for name in [n for n in os.environ if n.startswith("LOCALRANK_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCALRANK_HOME", str(tmp_path))
    for argv in (["config"], ["collections", "--local"], ["search", "q", "-c", "notes"]):
        assert main(argv) == 9, argv
        err_text = capsys.readouterr().err
        assert "not UTF-8" in err_text and str(path) in err_text and "Traceback" not in err_text
