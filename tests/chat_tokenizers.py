"""Tiny offline tokenizers carrying real chat templates (tests/templates/, see SOURCES).

Each carries the special tokens its template writes, and the pre-tokenizer family of the real
model (byte-level BPE for Qwen, Llama 3, DeepSeek, SmolLM; SentencePiece-style Metaspace for
Mistral, Phi-3.5 and Gemma, where a reply's first token carries the space before it). What a
test expects of a template (its end-of-turn marker, the EOS it writes after the last turn) is
written here by hand from reading the template, never taken from the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Spec:
    file: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    style: str  # "bytelevel" or "metaspace"
    marker: str  # what the template writes right after every reply
    final_eos: str = ""  # what it writes after the last message, if anything
    system: bool = True  # False: the template refuses a system turn
    reasoning: str = "none"  # "qwen3": splits <think> off the last turn; "strip": drops it everywhere


CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
SPECS = {
    "qwen3": Spec("qwen3.jinja", CHATML, None, "<|im_end|>", "bytelevel", "<|im_end|>", reasoning="qwen3"),
    "qwen3_vl": Spec(
        "qwen3_vl.jinja",
        CHATML + ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
        None,
        "<|im_end|>",
        "bytelevel",
        "<|im_end|>",
        reasoning="qwen3",
    ),
    "llama3_1": Spec(
        "llama3_1.jinja",
        (
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ),
        "<|begin_of_text|>",
        "<|eot_id|>",
        "bytelevel",
        "<|eot_id|>",
    ),
    "mistral_v3": Spec(
        "mistral_v3.jinja",
        ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"),
        "<s>",
        "</s>",
        "metaspace",
        "</s>",
    ),
    "gemma2": Spec(
        "gemma2.jinja",
        ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"),
        "<bos>",
        "<eos>",
        "metaspace",
        "<end_of_turn>",
        system=False,
    ),
    "gemma3": Spec(
        "gemma3.jinja",
        ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>"),
        "<bos>",
        "<eos>",
        "metaspace",
        "<end_of_turn>",
    ),
    "phi3_5": Spec(
        "phi3_5.jinja",
        ("<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        "<s>",
        "<|endoftext|>",
        "metaspace",
        "<|end|>",
        final_eos="<|endoftext|>",
    ),
    "deepseek_r1_distill": Spec(
        "deepseek_r1_distill.jinja",
        (
            "<｜begin▁of▁sentence｜>",
            "<｜end▁of▁sentence｜>",
            "<｜User｜>",
            "<｜Assistant｜>",
            "<think>",
            "</think>",
        ),
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "bytelevel",
        "<｜end▁of▁sentence｜>",
        reasoning="strip",
    ),
    "smollm3": Spec("smollm3.jinja", CHATML, None, "<|im_end|>", "bytelevel", "<|im_end|>"),
    "qwen3_generation": Spec(
        "qwen3_generation.jinja", CHATML, None, "<|im_end|>", "bytelevel", "<|im_end|>\n", reasoning="qwen3"
    ),
}

CORPUS = [
    "The capital of France is Paris. Who are you? I am Leviathan, the Abyssal Mind.",
    "a im t S model user assistant system think reasoning answer question",
    "".join(chr(c) for c in range(32, 127)),
]


def build(name: str, trim_offsets: bool = False):
    """A PreTrainedTokenizerFast for SPECS[name], trained on a few lines, with the template set.

    ``trim_offsets``: GPT-2's post-processor, whose offsets leave out the space a token carries."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = SPECS[name]
    tok = Tokenizer(models.BPE(byte_fallback=spec.style == "metaspace", unk_token=None))
    if spec.style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        if trim_offsets:
            tok.post_processor = processors.ByteLevel(trim_offsets=True)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-style: spaces become "▁" and stick to the word after them
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        )
        alphabet = sorted(set("".join(CORPUS).replace(" ", "▁")) | {"▁", "\n"})
    specials = list(spec.specials)
    if spec.style == "metaspace":
        specials += [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec.bos, eos_token=spec.eos)
    fast.chat_template = (TEMPLATES / spec.file).read_text(encoding="utf-8")
    return fast
