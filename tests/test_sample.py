"""`leviathan-cockpit sample`: exact strata, byte-identical lines, determinism, bad lines."""

from __future__ import annotations

import json
import random
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.data import sample as sample_mod
from engine.data.sample import sample_file
from engine.data.sample_count import BLOCK
from engine.data.sample_keys import MISSING, utf8_ok
from engine.data.sample_select import targets
from engine.errors import UserError
from tests.conftest import cli_here

CATS = {"general": 503, "coding": 251, "identity": 7, "esoteric": 125, "math": 15}


def _row(i: int, cat: str | None, rng: random.Random) -> bytes:
    obj = {"messages": [{"role": "user", "content": f"q{i} " + "x" * rng.randint(0, 60)}]}
    if cat is not None:
        obj["_category"] = cat
    style = i % 5
    if style == 0:
        return json.dumps(obj).encode()
    if style == 1:  # raw UTF-8, no spaces
        obj["messages"][0]["content"] += " naïve 東京 🜂"
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    if style == 2:  # key first, odd spacing
        return (
            f'{{ "_category" :{json.dumps(cat)} ,  "n": {i} }}'.encode() if cat else f'{{"n": {i}}}'.encode()
        )
    if style == 3:  # escaped key value
        return json.dumps(obj, ensure_ascii=True).replace('"messages"', '"m\\u0065ssages"').encode()
    return (json.dumps(obj) + "  ").encode()  # trailing spaces


def _corpus(path: Path, seed: int = 0, missing: int = 40) -> list[bytes]:
    rng = random.Random(seed)
    cats = [c for c, n in CATS.items() for _ in range(n)] + [None] * missing
    rng.shuffle(cats)
    lines = [_row(i, c, rng) for i, c in enumerate(cats)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def _cat(line: bytes) -> str:
    obj = json.loads(line)
    return obj.get("_category", MISSING)


def _stratum(line: bytes) -> str:
    """The stratum name json gives a line: a string as it is, anything else as JSON."""
    obj = json.loads(line)
    if "_category" not in obj:
        return MISSING
    v = obj["_category"]
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)


def _is_subsequence(sub: list[bytes], full: list[bytes]) -> bool:
    it = iter(full)
    return all(any(x == y for y in it) for x in sub)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.01, 1.0])
@pytest.mark.parametrize("fast", [True, False])
def test_strata_exact_lines_identical_in_order(tmp_path, fraction, fast):
    src = tmp_path / "in.jsonl"
    lines = _corpus(src)
    report = sample_file(src, tmp_path / "out.jsonl", fraction=fraction, seed=7, fast=fast)
    out = (tmp_path / "out.jsonl").read_bytes()
    assert out.endswith(b"\n")
    got = out[:-1].split(b"\n")
    assert _is_subsequence(got, lines)  # byte-identical, input order
    seen = Counter(_cat(x) for x in got)
    counts = Counter(_cat(x) for x in lines)
    for cat, n in counts.items():
        want = int(Fraction(str(fraction)) * n + Fraction(1, 2))
        assert seen[cat] == want == report.kept[cat], cat
    assert report.counts == dict(counts)
    assert report.bad == 0


def test_rounding_is_half_up_and_count_is_shared_exactly():
    assert targets({"a": 25, "b": 15, "c": 5}, fraction=0.1) == {"a": 3, "b": 2, "c": 1}
    got = targets({"a": 500, "b": 300, "c": 7, "d": 3}, count=100)
    assert sum(got.values()) == 100
    for k, n in {"a": 500, "b": 300, "c": 7, "d": 3}.items():
        assert abs(got[k] - 100 * n / 810) <= 1


def test_same_seed_same_bytes_other_seed_other_rows(tmp_path):
    src = tmp_path / "in.jsonl"
    _corpus(src)
    outs = []
    for i, seed in enumerate([3, 3, 4]):
        dst = tmp_path / f"o{i}.jsonl"
        sample_file(src, dst, fraction=0.2, seed=seed)
        outs.append(dst.read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_parallel_counting_gives_the_same_sample(tmp_path, monkeypatch):
    src = tmp_path / "in.jsonl"
    lines = _corpus(src)
    with open(src, "ab") as f:  # bad lines in several parts, and an unterminated last line
        f.write(b'{"_category": "coding", "x": \n[1, 2]\n\n{"_category": "math"}')
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    r1 = sample_file(src, one, fraction=0.3, seed=1, jobs=1, bad_lines_path=str(tmp_path / "b1"))
    monkeypatch.setattr(sample_mod, "PARALLEL_MIN", 0)
    r3 = sample_file(src, many, fraction=0.3, seed=1, jobs=3, bad_lines_path=str(tmp_path / "b3"))
    assert one.read_bytes() == many.read_bytes()
    assert (
        r1.bad_shown
        == r3.bad_shown
        == [(len(lines) + 1, r1.bad_shown[0][1]), (len(lines) + 2, r1.bad_shown[1][1])]
    )
    assert (tmp_path / "b1").read_text() == (tmp_path / "b3").read_text()
    assert r1.counts == r3.counts and r1.lines == r3.lines == len(lines) + 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # scratch files gone


def test_rows_without_the_key_are_their_own_stratum(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = _corpus(src, missing=60)
    report = sample_file(src, tmp_path / "out.jsonl", fraction=0.5, by="_category", seed=0)
    assert report.counts[MISSING] == 60
    got = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert sum(1 for x in got if "_category" not in json.loads(x)) == 30
    assert len(lines) == sum(report.counts.values())


def test_bad_lines_reported_by_number_and_left_out(tmp_path):
    rows = [
        b'{"_category": "a", "n": 1}',
        b'{"_category": "a", "n": 2',  # 2: cut short
        b"",  # 3: blank, not an error
        b'{"_category": "a", "t": "\xff\xfe"}',  # 4: not UTF-8
        b"[1, 2, 3]",  # 5: not an object
        b'{"_category": "a", "x": NaN}',  # 6: json reads it (the trainer does too): kept
        b'{"_category": "b"} {"_category": "b"}',  # 7: two values
        b'\xef\xbb\xbf{"_category": "b"}',  # 8: a BOM: json reads it
        b'{"_category": "a", "t": "tab\there"}',  # 9: raw control character
        b'{"_category": "a", "n": 3}',
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    for fast in (True, False):
        report = sample_file(src, tmp_path / "out.jsonl", fraction=1.0, seed=0, fast=fast)
        assert [n for n, _ in report.bad_shown] == [2, 4, 5, 7, 9]
        assert report.bad == 5 and report.blank == 1 and report.lines == 10
        assert "not UTF-8" in report.bad_shown[1][1] and "not a JSON object" in report.bad_shown[2][1]
        out = (tmp_path / "out.jsonl").read_bytes().split(b"\n")[:-1]
        assert out == [rows[0], rows[5], rows[7], rows[9]]
        assert report.counts == {"a": 3, "b": 1}


def test_count_gives_exactly_n_rows(tmp_path):
    src = tmp_path / "in.jsonl"
    lines = _corpus(src)
    report = sample_file(src, tmp_path / "out.jsonl", count=101, seed=5)
    got = (tmp_path / "out.jsonl").read_bytes().splitlines()
    assert len(got) == 101 == sum(report.kept.values())
    counts = Counter(_cat(x) for x in lines)
    seen = Counter(_cat(x) for x in got)
    for cat, n in counts.items():
        assert abs(seen[cat] - 101 * n / len(lines)) <= 1


def test_last_line_without_newline_and_a_line_longer_than_a_block(tmp_path):
    big = json.dumps({"_category": "big", "t": "y" * (BLOCK + 12345)}).encode()
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"_category": "a"}\r\n' + big + b'\n{"_category": "c"}')
    sample_file(src, tmp_path / "out.jsonl", fraction=1.0)
    assert (
        tmp_path / "out.jsonl"
    ).read_bytes() == b'{"_category": "a"}\r\n' + big + b'\n{"_category": "c"}\n'


def test_selection_is_uniform_within_a_stratum(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(b'{"_category": "a", "i": %d}\n' % i for i in range(40)))
    hits = Counter()
    for seed in range(200):
        sample_file(src, tmp_path / "out.jsonl", fraction=0.25, seed=seed)
        hits.update(json.loads(x)["i"] for x in (tmp_path / "out.jsonl").read_bytes().splitlines())
    freq = np.array([hits[i] for i in range(40)]) / 200
    assert abs(freq.mean() - 0.25) < 1e-9
    assert freq.min() > 0.15 and freq.max() < 0.35


def test_failed_run_leaves_nothing_and_bad_usage_is_exit_2(tmp_path):
    src = tmp_path / "in.jsonl"
    _corpus(src)
    with pytest.raises(UserError, match="usable rows"):
        sample_file(src, tmp_path / "out.jsonl", count=10**6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    r = cli_here("sample", src, "-o", src, "--fraction", "0.1")
    assert r.returncode == 2 and "same file" in r.stderr and "Traceback" not in r.stderr
    r = cli_here("sample", tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl", "--fraction", "0.1")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = cli_here("sample", src, "-o", tmp_path / "o.jsonl", "--fraction", "1.5")
    assert r.returncode == 2 and "--fraction" in r.stderr


def test_cli_prints_counts_progress_and_bad_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    _corpus(src)
    with open(src, "ab") as f:
        f.write(b"{oops\n")
    out = tmp_path / "sample.jsonl"
    r = cli_here("sample", src, "-o", out, "--fraction", "0.1", "--by", "_category", "--seed", "9")
    assert r.returncode == 0, r.stderr
    assert "general" in r.stdout and "50" in r.stdout and "(missing)" in r.stdout
    assert "MB/s" in r.stderr and "pass 2/2" in r.stderr
    assert "line 942: bad JSON" in r.stderr
    assert len(out.read_bytes().splitlines()) == sum(
        int(Fraction(n, 10) + Fraction(1, 2)) for n in [*CATS.values(), 40]
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([0x41, 0x80, 0x9F, 0xA0, 0xBF, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5]),
        max_size=12,
    )
)
def test_utf8_check_agrees_with_python(data):
    raw = bytes(data)
    try:
        raw.decode("utf-8", "surrogatepass")
        ok = True
    except UnicodeDecodeError:
        ok = False
    assert utf8_ok(np.frombuffer(raw, np.uint8)) == ok


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from(["_category", "a", "b"]),
                st.one_of(st.text(max_size=5), st.integers(), st.none()),
                max_size=3,
            ),
            st.text(max_size=8),
        ),
        min_size=1,
        max_size=12,
    ),
    st.data(),
)
def test_fast_and_plain_json_paths_agree(tmp_path_factory, rows, data):
    lines = []
    for r in rows:
        line = r if isinstance(r, str) else json.dumps(r, ensure_ascii=data.draw(st.booleans()))
        if data.draw(st.integers(0, 4)) == 0:  # damage it
            cut = data.draw(st.integers(0, len(line)))
            line = line[:cut] + data.draw(st.sampled_from(["", "}", "{", '"', "\\", "\t"]))
        lines.append(line.replace("\n", " ").encode())
    d = tmp_path_factory.mktemp("fuzz")
    (d / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    a = sample_file(d / "in.jsonl", d / "fast.jsonl", fraction=0.5, seed=1, fast=True, strict=True)
    b = sample_file(d / "in.jsonl", d / "plain.jsonl", fraction=0.5, seed=1, fast=False, strict=True)
    assert (d / "fast.jsonl").read_bytes() == (d / "plain.jsonl").read_bytes()
    assert [n for n, _ in a.bad_shown] == [n for n, _ in b.bad_shown]
    assert a.counts == b.counts
    # Read at the ends: never a malformed line written, exact strata of what it counted,
    # and the strict sample whenever it counted again.
    c = sample_file(d / "in.jsonl", d / "ends.jsonl", fraction=0.5, seed=1)
    out = (d / "ends.jsonl").read_bytes().splitlines()
    assert all(isinstance(json.loads(x), dict) for x in out)
    assert Counter(_stratum(x) for x in out) == +Counter(targets(c.counts, fraction=0.5))
    if c.recount:
        assert (d / "ends.jsonl").read_bytes() == (d / "fast.jsonl").read_bytes()
        assert c.counts == a.counts and c.bad_shown == a.bad_shown


def _key_first(cat, rest: dict) -> str:
    return json.dumps({"_category": cat, **rest})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.none(),
                st.sampled_from(["a", "b", "naïve", "東京", 'q"uote', "back\\slash", ""]),
                st.integers(0, 3),
            ),
            st.sampled_from(
                ["last", "first", "middle", "nested", "twice", "escaped", "compact", "crlf", "pad"]
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 3),
)
def test_read_at_the_end_gives_the_strict_sample_for_well_formed_rows(tmp_path_factory, rows, seed):
    lines = []
    for i, (cat, where, ascii_only) in enumerate(rows):
        body = {"messages": [{"role": "user", "content": f"row {i} ü"}]}
        has = {} if cat is None else {"_category": cat}
        dump = lambda o, a=ascii_only, **k: json.dumps(o, ensure_ascii=a, **k)  # noqa: E731
        if where == "last":
            line = dump({**body, **has})
        elif where == "first":
            line = dump({**has, **body})
        elif where == "middle":
            line = dump({**body, **has, "n": i})
        elif where == "nested":  # a _category inside a message is not the row's
            line = dump({"messages": [{"role": "user", "content": "x", "_category": "inner"}], **has})
        elif where == "twice":  # json keeps the last
            line = dump({**body, "_category": "first"})[:-1] + ", " + dump(has)[1:] if has else dump(body)
        elif where == "escaped":  # the key spelled with an escape
            line = dump({**body, **has}).replace('"_category"', '"\\u005fcategory"')
        elif where == "compact":
            line = dump({**body, **has}, separators=(",", ":"))
        elif where == "crlf":
            line = dump({**body, **has}) + "\r"
        else:
            line = "  " + dump({**body, **has}) + " \t"
        lines.append(line.encode())
    d = tmp_path_factory.mktemp("ends")
    (d / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    want = Counter(_stratum(x) for x in lines)
    strict = sample_file(d / "in.jsonl", d / "strict.jsonl", fraction=0.5, seed=seed, strict=True)
    ends = sample_file(d / "in.jsonl", d / "ends.jsonl", fraction=0.5, seed=seed)
    assert ends.counts == strict.counts == dict(want)
    assert not ends.recount and ends.bad == 0
    assert (d / "ends.jsonl").read_bytes() == (d / "strict.jsonl").read_bytes()


def test_a_kept_line_malformed_inside_means_counting_again(tmp_path):
    rows = [b'{"_category": "a", "n": %d}' % i for i in range(6)]
    rows[2] = b'{"messages": [}, "_category": "a"}'  # the end looks right, the middle is not JSON
    rows[4] = b'{"t": "\xff", "_category": "a"}'  # not UTF-8
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    report = sample_file(src, tmp_path / "out.jsonl", fraction=1.0, bad_lines_path=str(tmp_path / "bad"))
    assert report.recount.startswith("line 3: bad JSON")
    assert [n for n, _ in report.bad_shown] == [3, 5] and report.counts == {"a": 4}
    assert (tmp_path / "out.jsonl").read_bytes().splitlines() == [rows[i] for i in (0, 1, 3, 5)]
    assert [ln.split("\t")[0] for ln in (tmp_path / "bad").read_text().splitlines()] == ["3", "5"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_strict_and_the_recount_note(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"_category": "a"}\n{"x": [}, "_category": "a"}\n{"_category": "b"}\n')
    r = cli_here("sample", src, "-o", tmp_path / "o.jsonl", "--fraction", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "counted again, every row parsed in full: line 2: bad JSON" in r.stderr
    assert "line 2: bad JSON" in r.stderr.split("malformed line(s) left out")[1]
    r = cli_here("sample", src, "-o", tmp_path / "s.jsonl", "--fraction", "1", "--strict", "--no-progress")
    assert r.returncode == 0 and "counted again" not in r.stderr
    assert (tmp_path / "s.jsonl").read_bytes() == (tmp_path / "o.jsonl").read_bytes()
