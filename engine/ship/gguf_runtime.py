"""A written GGUF run by llama.cpp's own runtime, against the merged model it came from.

Where ``llama-cpp-python`` is installed (``pip install llama-cpp-python``: PyPI has only its
source package, which compiles llama.cpp: about 4 minutes on this project's 2-core dev machine),
every GGUF an export writes is loaded by llama.cpp (engine/ship/gguf_llama.py, in a child process)
and given the identity suite's prompts (the run's ``evaluation`` settings, else the guide's five),
each rendered with the model's chat template:

- tokens: llama.cpp's tokenization of each rendered prompt must equal the HF tokenizer's, token for
  token. A tokenizer that travelled wrong (merges, pre-tokenizer, special tokens) is the usual
  reason a GGUF "answers much worse in Ollama" while its weights are right.
- logits: llama.cpp answers greedily (argmax of its own logits, no sampler); on those tokens
  (prompt + its answer) three sets of float32 logits are compared: llama.cpp's, the merged
  model's, and the merged model's with the file's dequantized weights put in (torch, same
  tokens). llama.cpp against the merged model (max and mean |diff|, top-1 agreement) is what a
  user of the file gets; it is mostly the file's rounding, which the last set isolates. What is
  checked is llama.cpp against torch on the same weights: the runtime's own part, which must stay
  within ``RUNTIME_FACTOR`` times the rounding's, or ``FLOOR`` of the logits' spread (their
  standard deviation), whichever is larger. llama.cpp rounds activations on the fly (to f16 for
  f16 weights, bf16 for bf16, 8-bit blocks for quantized ones), so its part tracks the weights'
  rounding of the same precision. Measured on tiny random Llama and Qwen3 (hidden 256), it was
  0.8-0.9x the rounding's for f16, 0.3-0.8x for q8_0, 0.3x for q6_k, 0.2x q5_k_m and 0.1x q4_k_m
  (8-bit activations against 4-6-bit weights); the factors leave 3-5x room. Where the file's
  rounding is nil (an f16 file of bf16 weights, which f16 holds exactly) the floor applies:
  measured 0.0023 of the spread for f16 (benchmarks/export_gguf.py --tiny), 4e-6 for f32; the
  floors leave 4x or more. A wrong rope, norm, head layout or tensor moves the logits by the
  order of their spread.
- answers: the merged model answers greedily too; both answers are recorded, and judged by the
  identity suite's rule (``engine.evaluate.evaluate.names_persona``). For files of 8 bits or more,
  an answer that names the persona through the merged model must name it through llama.cpp too.
  For K-quants a lost persona is reported, not an error: 4-6 bits changing answers on a small model
  is the quantization the user asked for, not a broken file.

Any failure is an error (the GGUF is not kept). Without llama-cpp-python the export says that this
check was not run and what would add it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PACKAGE = "llama-cpp-python"
NOT_RUN = f"llama.cpp runtime check not run: {PACKAGE} is not installed (pip install {PACKAGE}; it compiles llama.cpp)"
ANSWER_TOKENS = 32  # per identity answer: enough to name the persona, short enough for an 8B on CPU

RUNTIME_FACTOR = {
    "f32": 3.0,
    "f16": 3.0,
    "bf16": 3.0,
    "q8_0": 3.0,
    "q6_k": 1.0,
    "q5_k_m": 0.75,
    "q4_k_m": 0.5,
}
# Of the merged logits' standard deviation: llama.cpp's part where the file's rounding is nil.
FLOOR = {"f32": 1e-3, "f16": 1e-2, "bf16": 5e-2, "q8_0": 5e-2, "q6_k": 5e-2, "q5_k_m": 5e-2, "q4_k_m": 5e-2}
EIGHT_BITS = ("f32", "f16", "bf16", "q8_0")


def memory_shortfall(merged: Path, gguf_bytes: int, free: tuple[int, int] | None = None) -> str | None:
    """Why the check cannot run here for lack of memory, or None when it fits.

    The reference is the merged model in float32 (4 bytes a parameter) on the GPU where there is
    one, else in RAM; llama.cpp maps the whole file into RAM beside it. An 8B model needs ~32 GiB
    for the reference: on a 24 GiB machine without a GPU the export would be killed by the kernel
    halfway, so it is not started. ``free`` is (GPU bytes or 0, RAM bytes), measured when None.
    """
    import torch

    params = parameter_count(merged)
    gpu, ram = free if free is not None else _free_memory()
    need_ref, margin = 4 * params, 2**30
    if gpu and torch.cuda.is_available():
        short = need_ref + margin > gpu or gguf_bytes + margin > ram
    else:
        short = need_ref + gguf_bytes + 2 * margin > ram
    if not short:
        return None
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    where = f"{gib(gpu)} free on the GPU, {gib(ram)} of RAM" if gpu else f"{gib(ram)} of RAM available"
    return (
        f"llama.cpp runtime check not run: it needs the merged model in float32 ({gib(need_ref)}) and the file "
        f"({gib(gguf_bytes)}) in memory at once, and this machine has {where} (every tensor was still "
        "read back and checked; run the export on a machine with more memory for the runtime check)"
    )


def parameter_count(merged: Path) -> int:
    """Parameters in the merged folder's safetensors, read from their headers only."""
    import math

    from safetensors import safe_open

    total = 0
    for shard in sorted(Path(merged).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return total


def _free_memory() -> tuple[int, int]:
    import torch

    from engine.chat.base_copy import free_bytes

    gpu = free_bytes(torch.device("cuda")) if torch.cuda.is_available() else 0
    return gpu, free_bytes(torch.device("cpu"))


def available() -> bool:
    """llama-cpp-python importable (not only present: a broken build is as good as none)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Answer:
    prompt: str
    merged: str
    gguf: str
    same: bool
    merged_passed: bool
    gguf_passed: bool
    margin: float | None = None  # the merged model's logit gap at the first different token


@dataclass
class RuntimeCheck:
    quant: str
    prompts: int = 0
    tokens_equal: int = 0
    positions: int = 0
    scale: float = 0.0  # std of the merged model's logits
    max_diff: float = 0.0  # llama.cpp against the merged model: what a user of the file gets
    mean_diff: float = 0.0
    top1: float = 0.0
    rounding_diff: float = 0.0  # torch with the file's weights against the merged model
    rounding_top1: float = 0.0
    runtime_diff: float = 0.0  # llama.cpp against torch with the file's weights: what is checked
    allowed: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.prompts > 0

    def summary(self) -> str:
        same = sum(a.same for a in self.answers)
        return (
            f"llama.cpp: tokens equal {self.tokens_equal}/{self.prompts}; logits ({self.positions} positions, std "
            f"{self.scale:.1e}) vs merged max|diff| {self.max_diff:.1e} mean {self.mean_diff:.1e} top-1 "
            f"{self.top1:.0%} (rounding alone {self.rounding_diff:.1e}, {self.rounding_top1:.0%}), vs the file's "
            f"weights in torch {self.runtime_diff:.1e} (allowed {self.allowed:.1e}); identity answers equal "
            f"{same}/{len(self.answers)}, persona named {sum(a.merged_passed for a in self.answers)} merged / "
            f"{sum(a.gguf_passed for a in self.answers)} llama.cpp"
        )

    def record(self) -> dict:
        keys = (
            "ok prompts tokens_equal positions scale max_diff mean_diff top1 rounding_diff rounding_top1 "
            "runtime_diff allowed"
        )
        return {
            **{k: getattr(self, k) for k in keys.split()},
            "answer_tokens": ANSWER_TOKENS,
            "answers": [a.__dict__ for a in self.answers],
            "problems": self.problems[:20],
            "notes": self.notes,
        }


@dataclass
class Prompt:
    text: str  # the identity prompt as asked
    rendered: str  # the conversation as the chat template writes it
    ids: list[int]  # the HF tokenizer's tokens of ``rendered``
    answer: list[int]  # the merged model's greedy answer


class Reference:
    """The merged model's side, made once per export: float32, on the GPU where there is one."""

    def __init__(self, merged: Path) -> None:
        import torch
        from transformers.utils.logging import disable_progress_bar

        from engine.chat.stop_tokens import stop_token_ids
        from engine.ship.merge import load_checkpoint_tokenizer, load_full_base

        self.merged = merged
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        disable_progress_bar()  # transformers' weight-loading bar; the export prints its own lines
        self.model, _ = load_full_base(str(merged), torch.float32, self.device)
        self.model.eval()
        self.tokenizer = load_checkpoint_tokenizer(merged, str(merged))
        self.settings, cases = _identity_suite(merged)
        self.stops = stop_token_ids(self.tokenizer, self.model)
        self.prompts = [self._prompt(c.prompt) for c in cases]

    def _prompt(self, prompt) -> Prompt:
        from engine.chat.generate import chat_messages

        messages = chat_messages(prompt, self.settings.system_prompt)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Prompt(prompt if isinstance(prompt, str) else str(prompt), text, ids, self.greedy(ids))

    def greedy(self, ids: list[int]) -> list[int]:
        import torch

        from engine.chat.generate import hf_sampling

        with torch.no_grad():
            out = self.model.generate(
                input_ids=torch.tensor([ids], device=self.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=self.device),
                max_new_tokens=ANSWER_TOKENS,
                eos_token_id=sorted(self.stops),
                pad_token_id=min(self.stops),
                **hf_sampling(0.0),
            )
        return _until_stop(out[0, len(ids) :].tolist(), self.stops)

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids], device=self.device))
        return out.logits[0].float().cpu().numpy()

    def file_logits(self, gguf_path: Path, sequences: list[list[int]]) -> list[np.ndarray]:
        """Logits of ``sequences`` by the merged model carrying the GGUF's dequantized weights (what
        the file's rounding alone does, computed by torch), the merged weights put back after."""
        import torch
        from safetensors import safe_open

        from engine.ship.gguf_convert import model_class
        from engine.ship.gguf_verify import file_weights

        state = self.model.state_dict()
        done: set[str] = set()
        try:
            with torch.no_grad():  # one tensor at a time: an 8B model's float32 copy is never whole
                for k, w in file_weights(gguf_path, self.merged, model_class(self.merged)[1]):
                    if k not in state:
                        raise KeyError(f"{k} not in the loaded model")
                    state[k].copy_(torch.from_numpy(w))
                    done.add(k)
            return [self.logits(ids) for ids in sequences]
        finally:
            with torch.no_grad():
                for shard in sorted(self.merged.glob("*.safetensors")):
                    with safe_open(str(shard), framework="pt") as f:
                        for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                            if k in done:
                                state[k].copy_(f.get_tensor(k))

    def text(self, tokens: list[int]) -> str:
        from engine.chat.generate import strip_thinking

        return strip_thinking(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def close(self) -> None:
        del self.model


def _identity_suite(merged: Path):
    from engine.config.saved_config import run_config
    from engine.evaluate.evaluate import Settings, suite_cases
    from engine.run import lineage

    run_dir = lineage.read_info(merged).get("run_dir")
    config = run_config(run_dir) if run_dir and Path(run_dir).is_dir() else None
    settings = Settings.from_config(getattr(config, "evaluation", None))
    return settings, suite_cases("identity", config, None)


def _until_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i]
    return tokens


def run_check(gguf_path: Path, quant: str, ref: Reference) -> RuntimeCheck:
    """llama.cpp on ``gguf_path`` against ``ref``; the result says what failed, nothing raises."""
    from engine.evaluate.evaluate import names_persona

    result = RuntimeCheck(quant)
    ran = _llama_side(gguf_path, ref, result)
    if ran is None:
        return result
    diffs, sequences = [], []
    for i, p in enumerate(ref.prompts):
        result.prompts += 1
        theirs = ran[f"tokens{i}"].tolist()
        if theirs == p.ids:
            result.tokens_equal += 1
        else:
            result.problems.append(_token_problem(p, theirs, ref))
        chosen = ran[f"chosen{i}"].tolist()
        answer = _until_stop(chosen, ref.stops)
        logits = ran[f"logits{i}"]
        merged = ref.logits(p.ids + answer)[: len(logits)]
        diffs.append((merged, logits))
        sequences.append(p.ids + answer)
        merged_text, gguf_text = ref.text(p.answer), ref.text(answer)
        a = Answer(
            p.text,
            merged_text,
            gguf_text,
            answer == p.answer,
            names_persona(merged_text, ref.settings),
            names_persona(gguf_text, ref.settings),
        )
        if not a.same:
            a.margin = _margin(merged, len(p.ids), chosen)
        result.answers.append(a)
    try:
        file_side = [
            f[: len(m)] for f, (m, _) in zip(ref.file_logits(gguf_path, sequences), diffs, strict=True)
        ]
    except KeyError as e:
        result.problems.append(f"{gguf_path.name}: its tensors do not map back onto the merged model: {e}")
        return result
    _score(result, diffs, file_side)
    return result


def _llama_side(gguf_path: Path, ref: Reference, result: RuntimeCheck):
    """llama.cpp's tokens, answers and logits (engine/ship/gguf_llama.py, in a child process), or
    None with the problem recorded when it did not finish."""
    import json
    import subprocess
    import sys
    import tempfile

    spec = {
        "gguf": str(gguf_path),
        "texts": [p.rendered for p in ref.prompts],
        "prompts": [p.ids for p in ref.prompts],
        "stops": sorted(ref.stops),
        "answer_tokens": ANSWER_TOKENS,
    }
    with tempfile.TemporaryDirectory(prefix="gguf-runtime-") as d:
        (Path(d) / "spec.json").write_text(json.dumps(spec))
        out = Path(d) / "out.npz"
        child = Path(__file__).with_name("gguf_llama.py")
        r = subprocess.run(
            [sys.executable, str(child), "run", str(Path(d) / "spec.json"), str(out)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0 or not out.is_file():
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-4:])
            how = f"signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
            result.problems.append(
                f"llama.cpp could not load or run {gguf_path.name} ({how}): {tail or 'no output'}"
            )
            return None
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


def _margin(merged: np.ndarray, start: int, chosen: list[int]) -> float:
    """The merged model's logit gap between its top token and llama.cpp's at the first position
    where llama.cpp's choice leaves the merged model's argmax (0: none does)."""
    for k, token in enumerate(chosen[: len(merged) - start + 1]):
        row = merged[start - 1 + k]
        if int(np.argmax(row)) != token:
            return float(row.max() - row[token])
    return 0.0


def _token_problem(p: Prompt, theirs: list[int], ref: Reference) -> str:
    k = next(
        (i for i, (a, b) in enumerate(zip(p.ids, theirs, strict=False)) if a != b),
        min(len(p.ids), len(theirs)),
    )
    show = lambda ids: ref.tokenizer.convert_ids_to_tokens(ids[k : k + 3])  # noqa: E731
    return (
        f"prompt {p.text!r}: llama.cpp tokenizes the rendered chat differently from the HF tokenizer "
        f"from token {k} (HF {show(p.ids)}, llama.cpp {show(theirs)}; {len(p.ids)} vs {len(theirs)} tokens)"
    )


def _score(
    result: RuntimeCheck, diffs: list[tuple[np.ndarray, np.ndarray]], file_side: list[np.ndarray]
) -> None:
    if not diffs:
        return
    merged = np.concatenate([m for m, _ in diffs]).astype(np.float64)
    theirs = np.concatenate([g for _, g in diffs]).astype(np.float64)
    torch_file = np.concatenate(file_side).astype(np.float64)
    if merged.shape != theirs.shape:
        result.problems.append(
            f"llama.cpp gives {theirs.shape[1]} logits a position, the merged model {merged.shape[1]}"
        )
        return
    d = np.abs(merged - theirs)
    result.positions = len(d)
    result.max_diff, result.mean_diff = float(d.max()), float(d.mean())
    result.scale = float(merged.std())
    result.top1 = float((merged.argmax(1) == theirs.argmax(1)).mean())
    result.rounding_diff = float(np.abs(torch_file - merged).max())
    result.rounding_top1 = float((merged.argmax(1) == torch_file.argmax(1)).mean())
    result.runtime_diff = float(np.abs(theirs - torch_file).max())
    result.allowed = max(
        RUNTIME_FACTOR[result.quant] * result.rounding_diff, FLOOR[result.quant] * result.scale
    )
    if result.runtime_diff > result.allowed:
        result.problems.append(
            f"llama.cpp's logits differ from the file's weights run by torch by up to {result.runtime_diff:.3e} "
            f"(allowed {result.allowed:.3e}: {RUNTIME_FACTOR[result.quant]}x what the file's rounding alone "
            f"moves them, {result.rounding_diff:.3e}); against the merged model {result.max_diff:.3e}"
        )
    if result.rounding_diff > result.scale:
        result.notes.append(
            f"{result.quant}'s rounding alone moves this model's logits by more than their spread: they "
            "cannot tell a wrong file from a right one here; the tokens and the tensor check still do"
        )
    for a in result.answers:
        if a.merged_passed and not a.gguf_passed:
            line = (
                f"identity prompt {a.prompt!r}: the merged model names the persona ({a.merged!r}), llama.cpp "
                f"does not ({a.gguf!r})"
            )
            (result.problems if result.quant in EIGHT_BITS else result.notes).append(line)
