"""Bad input everywhere (hypothesis): every config, dataset line or file gets either success or a
clear UserError (exit 2 from the CLI) naming the file (and line where there is one), never a
traceback."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config.config import KNOWN_KEYS, RunConfig, load_config, validate
from engine.data.data import Row, parse_line, read_rows
from engine.errors import UserError
from tests.conftest import DEMO_DATA, base_config, cli_here

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["lora", "qlora", "cosine", "auto", "chat_template", "sharegpt", "", "0.5", "1e-4"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12))


def _check_config_error(e: UserError, path: Path) -> None:
    assert str(path) in e.message, e.message  # names the file (and line when it has one)


def _load(tmp: Path, text: str | bytes) -> None:
    path = tmp / "fuzz.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    try:
        load_config(path)
    except UserError as e:
        _check_config_error(e, path)


@FAST
@given(st.dictionaries(keys, values, max_size=6))
def test_config_loader_random_keys_and_values(tmp_path_factory, d):
    _load(tmp_path_factory.mktemp("fuzz"), yaml.safe_dump(d, allow_unicode=True))


@FAST
@given(st.sampled_from(sorted(RunConfig.model_fields)), values, st.booleans())
def test_config_loader_one_bad_value_in_a_good_config(tmp_path_factory, key, value, nested):
    tmp = tmp_path_factory.getbasetemp()  # session-scoped: hypothesis reruns the body many times
    raw = base_config(
        str(DEMO_DATA.parent), output_dir=str(tmp / "fuzz-out"), logs_dir=str(tmp / "fuzz-logs")
    )
    if nested and key in ("datasets",):
        raw[key] = [{"path": value, "type": value}]
    else:
        raw[key] = value
    _load(tmp_path_factory.mktemp("fuzz"), yaml.safe_dump(raw, allow_unicode=True))


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_config_loader_arbitrary_text_and_bytes(tmp_path_factory, text):
    _load(tmp_path_factory.mktemp("fuzz"), text)


@FAST
@given(st.dictionaries(st.one_of(st.integers(), st.none(), st.booleans(), st.floats()), values, max_size=4))
def test_validate_takes_any_mapping(d):
    try:
        validate(d, Path("x.yaml"))
    except UserError as e:
        assert "x.yaml" in e.message


# -- dataset lines ----------------------------------------------------------------------------

roles = st.one_of(st.sampled_from(["system", "user", "assistant", "human", "gpt", "tool", ""]), values)
turn = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": values}),
    st.fixed_dictionaries({"from": roles, "value": values}),
    values,
)
rows = st.one_of(
    st.fixed_dictionaries(
        {"messages": st.one_of(st.lists(turn, max_size=4), values)},
        optional={"_category": values},
    ),
    st.fixed_dictionaries(
        {"conversations": st.one_of(st.lists(turn, max_size=4), values)},
        optional={"_category": values},
    ),
    st.fixed_dictionaries(
        {}, optional={"instruction": values, "input": values, "output": values, "_category": values}
    ),
    values,
)
lines = st.one_of(
    rows.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=80),
    st.text(max_size=80).map(str.encode),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # absurd nesting
)
ds_types = st.sampled_from(["chat_template", "sharegpt", "alpaca"])


@settings(max_examples=300, deadline=None)
@given(lines, ds_types, st.one_of(st.none(), st.sampled_from(["messages", "conversations", "x"])))
def test_parse_line_never_raises(raw, ds_type, field):
    item = parse_line("data.jsonl", 7, raw, ds_type, field)
    if isinstance(item, tuple):
        f, n, why = item
        assert (f, n) == ("data.jsonl", 7) and isinstance(why, str) and why
    else:
        assert item is None or isinstance(item, Row)


@FAST
@given(st.lists(lines, min_size=1, max_size=12), ds_types)
def test_read_rows_reports_every_bad_row_with_file_and_line(tmp_path_factory, raws, ds_type):
    path = tmp_path_factory.mktemp("fuzz") / "d.jsonl"
    path.write_bytes(b"\n".join(r.replace(b"\n", b" ").replace(b"\r", b" ") for r in raws) + b"\n")
    got = list(read_rows(str(path), ds_type))
    numbers = [x.line if isinstance(x, Row) else x[1] for x in got]
    assert numbers == sorted(set(numbers)) and all(1 <= n <= len(raws) for n in numbers)
    assert all(x[0] == str(path) for x in got if isinstance(x, tuple))


# -- through the tokenizer and the chat template (engine.data.prepare) ------------------------------

words = st.text(alphabet=string.ascii_letters + " \n{}%<>|'\"\\", min_size=0, max_size=30)
chat_turn = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": words}
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from engine.model.model import load_tokenizer

    return load_tokenizer(str(tiny_model("qwen3")), "tokenizer_default", None, False)


@FAST
@given(st.lists(st.lists(chat_turn, min_size=1, max_size=5), min_size=1, max_size=6))
def test_prepare_check_reports_bad_rows_never_raises(tmp_path_factory, tokenizer, convs):
    from engine.data.prepare import check

    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "d.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    config, _ = validate(base_config("unused", path, sequence_len=64), tmp / "c.yaml")
    stats = check(config, tokenizer)
    assert sum(stats.rows_by_file.values()) + len(stats.bad) == len(convs)
    assert all(f == str(path) and 1 <= n <= len(convs) and why for f, n, why in stats.bad)


# -- the `check` command on a few generated files ----------------------------------------------


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, min_size=1, max_size=8), st.sampled_from(["chat_template", "sharegpt", "alpaca"]))
def test_check_cli_exits_0_or_2_with_file_and_line(tmp_path_factory, raws, ds_type):
    tmp = tmp_path_factory.mktemp("check")
    data = tmp / "d.jsonl"
    data.write_bytes(b"\n".join(r.replace(b"\n", b" ").replace(b"\r", b" ") for r in raws) + b"\n")
    cfg = tmp / "c.yaml"
    raw = base_config("unused", data)
    raw["datasets"][0]["type"] = ds_type
    cfg.write_text(yaml.safe_dump(raw))
    r = cli_here("check", cfg, "--no-tokenizer")
    assert r.returncode in (0, 2), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    if r.returncode == 2:
        assert f"{data}:" in r.stderr


@pytest.mark.parametrize(
    "over",
    [
        {"output_dir": "out\x00"},
        {"logs_dir": ""},
        {"base_model": "m\x00"},
        {"run_name": "../elsewhere"},
        {"datasets": [{"path": "d\x00.jsonl"}]},
        {"datasets": [{"path": "~no-such-user-here/d.jsonl"}]},
        {"datasets": "d.jsonl"},
        {"lora_r": 1e400},
        {"learning_rate": float("nan")},
    ],
)
def test_values_that_would_fail_later_are_refused_at_load(tmp_path, over):
    raw = {**base_config("some/model"), **over}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        load_config(path)
    except UserError as e:
        _check_config_error(e, path)


@pytest.mark.parametrize("key", ["num_epochs", "max_grad_norm", "learning_rate", "val_set_size"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_numbers_are_refused(tmp_path, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**base_config("some/model"), key: value}))
    with pytest.raises(UserError) as e:
        load_config(path)
    assert f"{path}:" in e.value.message and key in e.value.message


# -- inputs that pass the loader and used to fail later with a traceback ------------------------

RAISE_ON_LATE_SYSTEM = (
    "{% for m in messages %}{% if m.role == 'system' and not loop.first %}"
    "{{ raise_exception('System message must be at the beginning.') }}{% endif %}"
    "<|{{ m.role }}|>{{ m.content }}<|end|>\n{% endfor %}"
)


@pytest.mark.parametrize(
    ("over", "expect"),
    [
        ({"datasets": [{"path": "/nonexistent/d.jsonl"}]}, "/nonexistent/d.jsonl: no such file or folder"),
        (
            {"chat_template": "jinja", "chat_template_jinja": "{% for m in messages %}{{ m.content }"},
            "TemplateSyntaxError",
        ),
        ({"chat_template": "jinja", "chat_template_jinja": "{{ raise_exception('nope') }}"}, "nope"),
        (
            {
                "chat_template": "jinja",
                "chat_template_jinja": "{% for m in messages %}{{ m.role }}{% endfor %}",
            },
            "assistant's text",
        ),
    ],
)
def test_late_failures_are_user_errors(tiny_model, write_config, tmp_path, over, expect):
    from engine.train.train import run

    cfg = write_config(tiny_model("qwen3"), max_steps=2, **over)
    with pytest.raises(UserError) as e:
        run(load_config(cfg)[0])
    assert expect in str(e.value)
    assert not (tmp_path / "logs" / "test" / "config.yaml").exists()  # a failed first start wrote none


def test_a_row_the_template_refuses_is_a_bad_row_with_file_and_line(tiny_model, tmp_path):
    from engine.data.prepare import check

    data = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    late = {"messages": [*good["messages"], {"role": "system", "content": "late"}, good["messages"][1]]}
    data.write_text("\n".join(json.dumps(r) for r in (good, late, good)) + "\n")
    raw = base_config(
        str(tiny_model("qwen3")), data, chat_template="jinja", chat_template_jinja=RAISE_ON_LATE_SYSTEM
    )
    config, _ = validate(raw, tmp_path / "c.yaml")
    from engine.model.model import load_tokenizer

    tok = load_tokenizer(config.base_model, config.chat_template, config.chat_template_jinja, False)
    stats = check(config, tok)
    assert stats.bad == [
        (
            str(data),
            2,
            "the chat template refused it: TemplateError: System message must be at the beginning.",
        )
    ]
    assert sum(stats.rows_by_file.values()) == 2
