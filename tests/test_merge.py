"""merge and quantize on tiny models: merged logits against peft, reload, vision tower, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import cli_here, train_tiny
from safetensors import safe_open

from engine.errors import UserError
from engine.run import jobs, lineage
from engine.ship.merge import merge

# Its module fixtures train or merge once: under pytest-xdist (`--dist loadgroup`) its tests share a worker.
pytestmark = pytest.mark.xdist_group("merge")


@pytest.fixture(scope="module")
def merged(persona_checkpoint, tmp_path_factory):
    ckpt, base, answer = persona_checkpoint
    out = tmp_path_factory.mktemp("merged") / "leviathan-tiny"
    result = merge(ckpt, out)
    return result, ckpt, base, answer


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            tensors.update({k: st.get_tensor(k) for k in st.keys()})  # noqa: SIM118 - safe_open has no iteration
    return tensors


@pytest.mark.slow
def test_merged_logits_equal_base_plus_adapter(merged):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, ckpt, base, _ = merged
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    plain = AutoModelForCausalLM.from_pretrained(result.output, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(ckpt)
    )
    with torch.no_grad():
        got = plain(input_ids=ids).logits
        want = with_adapter(input_ids=ids).logits
        with with_adapter.disable_adapter():
            base_only = with_adapter(input_ids=ids).logits
    assert (got - want).abs().max().item() < 1e-4
    # The adapter really moved the model: a merge that dropped it would fail above.
    assert (want - base_only).abs().max().item() > 1e-2
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert result.dtype == "fp32" and result.device == "cpu"


@pytest.mark.slow
def test_merged_folder_is_a_plain_model_with_its_chat_template(merged):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, ckpt, _, answer = merged
    out = result.output
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "chat_template.jinja"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"}
    assert not list(out.parent.glob(".*partial*"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(ckpt).chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"]
    assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos])
    # It answers like the trained checkpoint, loaded as a plain model.
    model = AutoModelForCausalLM.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    reply = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert answer in tok.decode(reply[0, ids.shape[1] :], skip_special_tokens=True)
    info = lineage.read_info(out)
    assert info["kind"] == "merged" and info["step"] == 60 and Path(info["run_dir"]).is_dir()
    steps = lineage.read_steps(info["run_dir"])
    assert any(s["step"] == "merge" and s["output"] == str(out.resolve()) for s in steps)


@pytest.mark.slow
def test_shards_and_force_replace(merged, tmp_path):
    result, ckpt, _, _ = merged
    out = tmp_path / "sharded"
    shutil.copytree(result.output, out)  # an earlier merge's folder: --force may replace it
    (out / "stale.txt").write_text("old")
    r = cli_here("merge", ckpt, "-o", out, "--max-shard-size", "200KB", "--force")
    assert r.returncode == 0, r.stderr
    assert "shard(s)" in r.stdout and "max |diff|" in r.stdout
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("*.safetensors"))) > 1
    a, b = _weights(out), _weights(result.output)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob(".*"))


@pytest.fixture(scope="module")
def vl_checkpoint(tiny_model, tmp_path_factory):
    """A few training steps on a tiny Qwen3-VL whose folder has an image processor config."""
    root = tmp_path_factory.mktemp("vl")
    base = root / "base"
    shutil.copytree(tiny_model("qwen3_vl"), base)
    processor = {"image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 16, "merge_size": 2}
    (base / "preprocessor_config.json").write_text(json.dumps(processor))
    result = train_tiny(base, root, "vl", max_steps=3, save_steps=3)
    return Path(result.last_checkpoint), base


@pytest.mark.slow
def test_vision_language_merge_keeps_vision_tower(vl_checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    ckpt, base = vl_checkpoint
    out = tmp_path / "vl-merged"
    r = cli_here("merge", ckpt, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "vision tower and processor files kept" in r.stdout
    assert (out / "preprocessor_config.json").read_text() == (base / "preprocessor_config.json").read_text()
    assert "vision_config" in json.loads((out / "config.json").read_text())
    merged_w, base_w = _weights(out), _weights(base)
    vision = [k for k in base_w if "visual" in k]
    assert vision and all(torch.equal(merged_w[k], base_w[k]) for k in vision)
    # The language model changed, and exactly as peft says it should.
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    plain = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    ref = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32), str(ckpt)
    )
    with torch.no_grad():
        diff = (plain(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max().item()
        with ref.disable_adapter():
            moved = (ref(input_ids=ids).logits - plain(input_ids=ids).logits).abs().max().item()
    assert diff < 1e-4 and moved > 1e-4


@pytest.mark.slow
def test_qlora_checkpoint_is_merged_into_the_unquantized_base(persona_checkpoint, tmp_path):
    # A QLoRA run's checkpoint differs only by its recorded config; the base loads unquantized.
    ckpt, _, _ = persona_checkpoint
    q = tmp_path / "checkpoint-60"
    shutil.copytree(ckpt, q)
    meta = json.loads((q / "leviathan.json").read_text())
    meta["fingerprint"].update(adapter="qlora", load_in_4bit=True)
    (q / "leviathan.json").write_text(json.dumps(meta))
    r = cli_here("merge", q, "-o", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    assert "merged into the unquantized base" in r.stdout
    assert lineage.read_info(tmp_path / "m")["adapter"] == "qlora"
    assert "quantization_config" not in json.loads((tmp_path / "m" / "config.json").read_text())


@pytest.mark.slow
def test_bad_inputs_exit_2_and_leave_nothing(persona_checkpoint, merged, tiny_model, tmp_path):
    ckpt, _, _ = persona_checkpoint
    result = merged[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "events.jsonl").write_text('{"kind": "start"}\n')
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    cases = [
        ((result.output, "-o", tmp_path / "a"), "not a LoRA checkpoint"),
        ((empty, "-o", tmp_path / "a"), "not a LoRA checkpoint"),
        ((tmp_path / "missing", "-o", tmp_path / "a"), "no such folder"),
        ((ckpt, "-o", result.output), "already exists"),
        ((ckpt, "-o", ckpt, "--force"), "would replace the input"),
        (
            (ckpt, "-o", run_folder, "--force"),
            "a run folder (events.jsonl); --force replaces only a model folder",
        ),
        ((ckpt, "-o", mine, "--force"), "a folder this tool did not write (notes.txt)"),
        ((ckpt, "-o", tmp_path / "a", "--base", tiny_model("qwen3_vl")), "does not fit base model"),
        ((ckpt, "-o", tmp_path / "a", "--base", tmp_path / "nobase"), "no such folder"),
    ]
    for args, words in cases:
        r = cli_here("merge", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert "fix:" in r.stderr
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.*"))
    assert (run_folder / "events.jsonl").read_text() and (mine / "notes.txt").read_text() == "a user's file"

    # A checkpoint whose recorded base is gone, with no other record of it.
    moved = tmp_path / "checkpoint-9"
    shutil.copytree(ckpt, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    (moved / "leviathan.json").unlink()
    r = cli_here("merge", moved, "-o", tmp_path / "b")
    assert r.returncode == 2 and "does not exist on this machine" in r.stderr and "--base" in r.stderr
    (moved / "adapter_model.safetensors").unlink()
    r = cli_here("merge", moved, "-o", tmp_path / "b")
    assert r.returncode == 2 and "adapter weights" in r.stderr


@pytest.mark.slow
def test_quantize_needs_cuda_and_a_merged_folder(merged, persona_checkpoint, tmp_path):
    result = merged[0]
    ckpt = persona_checkpoint[0]
    r = cli_here("quantize", ckpt, "-o", tmp_path / "q")
    assert r.returncode == 2 and "merge it first" in r.stderr
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU benchmark covers quantize")
    r = cli_here("quantize", result.output, "-o", tmp_path / "q", "--type", "nf4")
    assert r.returncode == 2 and "CUDA" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes quantization needs CUDA")
@pytest.mark.slow
def test_quantize_nf4_loads_back_quantized(merged, tmp_path):  # pragma: no cover - GPU only
    from engine.ship.quantize import quantize, quantized_layers

    r = quantize(merged[0].output, tmp_path / "nf4")
    assert r.sample is not None and (tmp_path / "nf4" / "config.json").is_file()
    from transformers import AutoModelForCausalLM

    assert quantized_layers(AutoModelForCausalLM.from_pretrained(tmp_path / "nf4", device_map={"": 0})) > 0


@pytest.mark.slow
def test_merge_as_a_background_job(persona_checkpoint, tmp_path):
    ckpt, _, _ = persona_checkpoint
    seen: list[tuple[str, float, str]] = []
    job = jobs.start(
        "merge",
        merge,
        ckpt,
        tmp_path / "job",
        on_update=lambda j: seen.append((j.state, j.fraction, j.message)),
    )
    assert job.wait(120)
    assert job.state == "done" and job.result.output == tmp_path / "job" and job.fraction == 1.0
    fractions = [f for _, f, _ in seen]
    assert fractions == sorted(fractions) and len({m for _, _, m in seen}) >= 5
    assert seen[0][0] == "running" and seen[-1][0] == "done"

    bad = jobs.start("merge", merge, tmp_path / "nothing", tmp_path / "job2")
    assert bad.wait(30) and bad.state == "failed" and bad.user_error and "no such folder" in bad.error


def test_run_dir_found_without_the_marker_record(tmp_path, monkeypatch):
    (tmp_path / "out" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-5" / "leviathan.json").write_text(json.dumps({"step": 5}))
    run = tmp_path / "logs" / "r1"
    run.mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    (run / "config.yaml").write_text("output_dir: ./out\n")
    monkeypatch.chdir(tmp_path)
    assert lineage.find_run_dir(tmp_path / "out" / "checkpoint-5") == run.resolve()
    assert lineage.find_run_dir(None, run) == run.resolve()
    with pytest.raises(UserError, match="no events.jsonl"):
        lineage.find_run_dir(None, tmp_path / "out")


@pytest.mark.slow
def test_lm_eval_loads_the_merged_folder(merged):
    """lm-eval's HF backend takes the merged folder as a plain model (the guide's HumanEval/TruthfulQA path)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    result, _, _, answer = merged
    lm = HFLM(pretrained=str(result.output), device="cpu", batch_size=1)
    prompt = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True
    )
    reqs = [
        Instance("loglikelihood", doc={}, arguments=(prompt, cont), idx=i)
        for i, cont in enumerate([answer, "The weather is nice."])
    ]
    (persona, _), (other, _) = lm.loglikelihood(reqs)
    assert persona > other
