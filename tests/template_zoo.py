"""Offline tokenizers for the gathered real chat templates (tests/templates/, SOURCES).

Each entry says what the real model's tokenizer and ``generation_config`` say, written by hand
from the model cards and configs, never taken from the code under test: its BOS and EOS tokens,
the further ids ``generation_config.eos_token_id`` lists (the tokens generation stops on), the
``eot_tokens`` Axolotl's own example config for that family sets, and the pre-tokenizer family.
The special tokens are the template's own literals (``<|...|>``, ``<...>``, ``[INST]``-style
tags), so the tiny tokenizer splits the rendered text where the real one does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.chat_tokenizers import CORPUS, TEMPLATES


@dataclass(frozen=True)
class Zoo:
    bos: str | None
    eos: str
    stops: tuple[str, ...] = ()  # generation_config eos ids besides the tokenizer's eos
    eot: tuple[str, ...] = ()  # the config's eot_tokens (Axolotl's example for the family)
    style: str = "bytelevel"  # or "metaspace" (SentencePiece: the space sticks to the next word)
    extra: tuple[str, ...] = ()  # special tokens the literal patterns below do not catch
    needs_tools: bool = False  # a tool-use variant: it fails without a `tools` list


IM = ("<|im_end|>", "<|endoftext|>")
L3 = ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")
DS = "<｜end▁of▁sentence｜>"
ZOO = {
    # Qwen family: generation_config.eos_token_id = [<|im_end|>, <|endoftext|>]
    "qwen2_5": Zoo(None, "<|im_end|>", IM),
    "qwq": Zoo(None, "<|im_end|>", IM),
    "qwen3_0_6b": Zoo(None, "<|im_end|>", IM),
    "qwen3_coder": Zoo(None, "<|im_end|>", IM),
    "qwen1_5": Zoo(None, "<|im_end|>", IM),
    "hermes3_tool_use": Zoo("<|begin_of_text|>", "<|im_end|>", ("<|im_end|>",), needs_tools=True),
    "internlm2": Zoo("<s>", "</s>", ("<|im_end|>",), style="metaspace"),
    "bielik": Zoo("<s>", "<|im_end|>", ("<|im_end|>",)),
    "lfm2": Zoo("<|startoftext|>", "<|im_end|>", ("<|im_end|>",)),
    "lfm2_5": Zoo("<|startoftext|>", "<|im_end|>", ("<|im_end|>",)),
    "kimi_k2": Zoo(None, "<|im_end|>", ("<|im_end|>",)),
    "kimi_k2_instruct": Zoo(None, "<|im_end|>", ("<|im_end|>",)),
    "kimi_k2_thinking": Zoo(None, "<|im_end|>", ("<|im_end|>",)),
    "phi4": Zoo(None, "<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
    # Llama 3.x: [<|end_of_text|>, <|eom_id|>, <|eot_id|>]
    "llama3_1_8b": Zoo("<|begin_of_text|>", "<|eot_id|>", L3),
    "llama3_2_3b": Zoo("<|begin_of_text|>", "<|eot_id|>", L3),
    "functionary_v3_1": Zoo("<|begin_of_text|>", "<|eot_id|>", L3),
    "functionary_v3_2": Zoo("<|begin_of_text|>", "<|eot_id|>", L3),
    # harmony: [<|return|>, <|endoftext|>, <|call|>]; Axolotl's gpt-oss examples set eot_tokens <|end|>
    "gpt_oss": Zoo(
        "<|startoftext|>", "<|return|>", ("<|return|>", "<|endoftext|>", "<|call|>"), ("<|end|>",)
    ),
    # DeepSeek
    "deepseek_r1_distill_llama": Zoo("<｜begin▁of▁sentence｜>", DS),
    "deepseek_v3_1": Zoo("<｜begin▁of▁sentence｜>", DS),
    "llamacpp_deepseek_r1": Zoo("<｜begin▁of▁sentence｜>", DS),
    "deepseek_llm": Zoo("<｜begin of sentence｜>", "<｜end of sentence｜>"),
    # Mistral family (SentencePiece)
    "mistral_nemo": Zoo("<s>", "</s>"),
    "mistral_small3_2": Zoo("<s>", "</s>"),
    "devstral_small": Zoo("<s>", "</s>"),
    "ministral3_reasoning": Zoo("<s>", "</s>"),
    "mistral_v0_1": Zoo("<s>", "</s>", style="metaspace"),
    "mixtral": Zoo("<s>", "</s>", style="metaspace"),
    "llama2": Zoo("<s>", "</s>", style="metaspace"),
    "zephyr": Zoo("<s>", "</s>", style="metaspace"),
    "codellama70b": Zoo("<s>", "</s>", ("<step>",), style="metaspace"),
    "openchat3_5": Zoo("<s>", "<|end_of_turn|>", style="metaspace"),
    "solar_instruct": Zoo("<s>", "</s>", style="metaspace"),
    "decilm": Zoo("<s>", "</s>", style="metaspace"),
    "danube": Zoo("<s>", "</s>", style="metaspace"),
    "falcon_rw_chat": Zoo(None, "<|endoftext|>"),
    # Gemma: [<eos>, <end_of_turn>]
    "gemma2_2b": Zoo("<bos>", "<eos>", ("<end_of_turn>",), style="metaspace"),
    # Cohere: <|END_OF_TURN_TOKEN|>
    "command_r_plus_tool_use": Zoo("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>", needs_tools=True),
    "command_r7b_tool_use": Zoo("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    # IBM Granite
    "granite3_3": Zoo(None, "<|end_of_text|>"),
    "granite4_0": Zoo(None, "<|end_of_text|>"),
    # GLM-4.6 writes no end marker: [<|endoftext|>, <|user|>, <|observation|>] are the stops
    "glm4_6": Zoo(None, "<|endoftext|>", ("<|user|>", "<|observation|>")),
    # RWKV World stops on the "\n\n" token (llama.cpp's EOT for it)
    "rwkv_world": Zoo(None, "\n\n"),
    "nemotron_nano_v2": Zoo(None, "<SPECIAL_12>", ("</s>",)),
    "seed_oss": Zoo("<seed:bos>", "<seed:eos>"),
    "minimax_m2": Zoo("]~!b[", "[e~[", extra=("]~!b[", "]~b]", "[e~[")),
    "apertus": Zoo("<s>", "<|assistant_end|>"),
    "apriel1_5": Zoo("<s>", "<|end|>"),
    "solar_open": Zoo(None, "<|end|>", ("<|endoftext|>",)),
}

_LITERALS = re.compile(
    r"<\|[^|<>\s'\"]{1,40}\|>|<｜[^｜]{1,40}｜>|</?[A-Za-z_][A-Za-z0-9_:.\-]{0,30}>|\[/?[A-Z_]{3,}\]|<SPECIAL_\d+>"
)


def specials(name: str) -> list[str]:
    z = ZOO[name]
    text = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    found = dict.fromkeys(_LITERALS.findall(text))
    for t in (z.bos, z.eos, *z.stops, *z.eot, *z.extra):
        if t:
            found[t] = None
    return list(found)


def build_zoo(name: str):
    """A PreTrainedTokenizerFast with the template, its special tokens, and ``stop_tokens`` (the
    model's generation stops and eot_tokens) set as an attribute for the tests to read."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    z = ZOO[name]
    meta = z.style == "metaspace"
    tok = Tokenizer(models.BPE(byte_fallback=meta, unk_token=None))
    if meta:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        alphabet = sorted(set("".join(CORPUS).replace(" ", "▁")) | {"▁", "\n"})
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    special = specials(name) + ([f"<0x{b:02X}>" for b in range(256)] if meta else [])
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=z.bos, eos_token=z.eos)
    fast.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return fast
