"""lm-eval on the GPU through our engine (model ``leviathan``) against lm-eval's own ``hf`` model.

Both get the same model object (our loader's, on the GPU), so only generation differs: ours
runs ``engine.chat.generate.run_rows`` (static cache, CUDA-graph steps), theirs ``model.generate``.
Tasks are local (a loglikelihood task and a generate_until task, written here), the model is
a tiny random Qwen3 (``--arch`` for the others) in float32 (``--dtype bfloat16`` to see bf16).
Prints whether the greedy answers and every metric are equal, and each side's time.

    python3 benchmarks/lmeval_gpu.py [--arch qwen3|llama|qwen3_vl] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MC = """task: gpu_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list: [{{metric: acc, aggregation: mean, higher_is_better: true}}]
"""
GEN = """task: gpu_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["Question:"], max_gen_toks: 64, do_sample: false, temperature: 0.0}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="qwen3")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)

    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from engine.evaluate.lmeval_engine import model_class
    from engine.model.loading import load_for_inference
    from engine.model.tiny import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="lmeval-gpu-"))
    rows = [
        {"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), "no"], "answer": 0}
        for a in range(1, 9)
        for b in range(1, 5)
    ]
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "mc.yaml").write_text(MC.format(data=data))
    (root / "gen.yaml").write_text(GEN.format(data=data))
    model = build_tiny_model(root / "model", arch=args.arch)
    loaded = load_for_inference(str(model), dtype=getattr(torch, args.dtype))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tm = TaskManager(include_path=str(root), include_defaults=False)
    obj = {"pretrained": loaded.model, "tokenizer": loaded.tokenizer}
    extra = {"batch_size": args.batch_size, "device": device}
    out = {}
    for name, lm in (
        ("ours (leviathan)", model_class().create_from_arg_obj(obj, extra)),
        ("lm-eval hf", HFLM(**obj, **extra)),
    ):
        t0 = time.perf_counter()
        res = lm_eval.simple_evaluate(
            model=lm, tasks=["gpu_mc", "gpu_gen"], task_manager=tm, log_samples=True
        )
        seconds = time.perf_counter() - t0
        out[name] = (res["results"], [s["resps"] for s in res["samples"]["gpu_gen"]], seconds)
    (ours, a_ours, s_ours), (theirs, a_theirs, s_theirs) = out.values()
    same_answers = a_ours == a_theirs
    same = {t: {k: ours[t][k] == v for k, v in theirs[t].items() if isinstance(v, float)} for t in theirs}
    dev = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"\nlm-eval on {dev}, tiny {args.arch}, {args.dtype}, batch {args.batch_size}")
    print(
        f"  greedy answers equal: {same_answers} ({sum(x == y for x, y in zip(a_ours, a_theirs, strict=True))}/{len(a_ours)})"
    )
    for t, keys in same.items():
        print(
            f"  {t}: metrics equal {all(keys.values())}  ({', '.join(f'{k}={ours[t][k]:.4f}' for k in keys)})"
        )
    print(f"  seconds: ours {s_ours:.1f}, hf {s_theirs:.1f}")
    return 0 if same_answers and all(all(k.values()) for k in same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
