"""Tiny random models of real architectures, built offline.

The demo and the tests use these instead of downloading anything: a random-initialised
config of the real architecture (Qwen3, Llama, Qwen3-VL) and a byte-level BPE tokenizer
trained on the fly, written with ``save_pretrained`` so they load through exactly the
code path a real checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.config.chat_templates import CHATML_TEMPLATE

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

ARCHITECTURES = ("qwen3", "llama", "qwen3_vl")


def _corpus_lines(extra_text: list[str] | None) -> list[str]:
    from engine.model.demo import demo_rows

    lines = []
    for row in demo_rows():
        lines.extend(m["content"] for m in row["messages"])
    lines.extend(extra_text or [])
    # Printable ASCII so that any English prompt tokenizes without unknown pieces.
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


def build_tokenizer(
    arch: str,
    extra_text: list[str] | None = None,
    vocab_size: int = 1024,
    extra_special: list[str] | None = None,
):
    """A byte-level BPE tokenizer with the architecture's chat template; ``extra_special``: more
    special tokens (other chat templates' markers, e.g. ``<end_of_turn>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS + [t for t in extra_special or [] if t not in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(extra_text), trainer=trainer)
    if arch == "llama":
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|endoftext|>",
        )
        fast.chat_template = LLAMA3_TEMPLATE
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
        fast.chat_template = CHATML_TEMPLATE
    return fast


def _config(arch: str, tokenizer, hidden: int, layers: int, initializer_range: float = 0.2):
    from transformers import LlamaConfig, Qwen3Config

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        # Wide enough weights that LoRA on a 64-wide model can move the loss the way a real
        # run does (to ~0 on a memorised answer); with the usual 0.02 it stalls near ln(vocab).
        initializer_range=initializer_range,
    )
    if arch == "qwen3":
        return Qwen3Config(**text)
    if arch == "llama":
        return LlamaConfig(**text)
    if arch == "qwen3_vl":
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        }
        vision = dict(hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=64)
        return qwen3_vl_config(text, tokenizer, vision, initializer_range=0.2)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHITECTURES}")


def qwen3_vl_config(text: dict, tokenizer, vision: dict, **extra):
    """A Qwen3-VL config: the text tower ``text`` (Qwen3 keys, with its mrope ``rope_parameters``)
    and a 2-block vision tower of the ``vision`` shape (hidden_size, intermediate_size,
    num_heads, num_position_embeddings), its image and video tokens the tokenizer's."""
    from transformers import Qwen3VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen3VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, out_hidden_size=text["hidden_size"], deepstack_visual_indexes=[0], **vision
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
        **extra,
    )


def build_tiny_model(
    out_dir: str | Path,
    arch: str = "qwen3",
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    extra_text: list[str] | None = None,
    extra_special: list[str] | None = None,
    initializer_range: float = 0.2,
) -> Path:
    """Write a random-initialised model and its tokenizer to ``out_dir``; return the path.
    ``initializer_range``: 0.2 lets LoRA move a tiny model (see ``_config``); transformers' usual
    0.02 gives a calmer network whose outputs move with its weights as a real model's do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch, extra_text, extra_special=extra_special)
    config = _config(arch, tokenizer, hidden, layers, initializer_range)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if arch == "qwen3_vl" else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny.json").write_text(json.dumps({"arch": arch, "hidden": hidden, "layers": layers}))
    return out


def demo_model_path(cache_dir: str | Path | None = None) -> Path:
    """The embedded demo's model, built on first use into a cache folder."""
    import os
    import shutil

    root = Path(cache_dir or os.environ.get("LEVIATHAN_CACHE", Path.home() / ".cache" / "leviathan"))
    path = root / "tiny-qwen3-demo-v2"
    if not (path / "tiny.json").exists():
        tmp = root / f".tiny-qwen3-demo-v2.{os.getpid()}"
        build_tiny_model(tmp, arch="qwen3", hidden=64, layers=2)
        # Rename last so a killed build never leaves a half-written model behind; where several
        # processes build at once (parallel test workers), the first rename wins.
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "tiny.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return path
