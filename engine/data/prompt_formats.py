"""Axolotl's plain prompt formats (``type: alpaca``, ``completion``) as (input_ids, labels).

Chat rows go through the tokenizer's chat template (``data.ChatEncoder``); these do not, as in
Axolotl: ``alpaca`` writes its ``### Instruction:`` / ``### Input:`` / ``### Response:`` prompt
(``axolotl.prompters.AlpacaPrompter``, copied string for string below) and trains on the
response and the EOS token only; ``completion`` trains on the whole text plus EOS. Each
piece is tokenized on its own with the tokenizer's special tokens, the way Axolotl's
``InstructionPromptTokenizingStrategy`` does it, so the token ids are Axolotl's.
"""

from __future__ import annotations

# Axolotl's prompt styles, from src/axolotl/prompters.py (AlpacaPrompter.match_prompt_style).
SYSTEM_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
SYSTEM_NO_INPUT_PROMPT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
STYLES = {
    "instruct": (
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "### Instruction:\n{instruction}\n\n### Response:\n",
        "{system}\n\n",
    ),
    "chat": (
        "USER: {instruction}\n{input}\nASSISTANT:",
        "USER: {instruction}\nASSISTANT:",
        "SYSTEM: {system}\n",
    ),
    "chatml": (
        "<|im_start|>user\n{instruction}\n{input}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>system\n{system}<|im_end|>\n",
    ),
    "phi": (
        "<|user|>\n{instruction}<|end|>{input}<|assistant|>",
        "<|user|>\n{instruction}<|end|>\n<|assistant|>\n",
        "<|system|>\n{system}<|end|>\n",
    ),
}


def alpaca_prompt(style: str, instruction: str, extra: str) -> str:
    """Axolotl's AlpacaPrompter._build_result without the output."""
    turn, turn_no_input, system = STYLES[style]
    if extra:
        return system.format(system=SYSTEM_PROMPT) + turn.format(instruction=instruction, input=extra)
    return system.format(system=SYSTEM_NO_INPUT_PROMPT) + turn_no_input.format(instruction=instruction)


def _tokenize(tok, text: str, add_eos: bool, strip_bos: bool) -> list[int]:
    """Axolotl's PromptTokenizingStrategy._tokenize (its truncation is left to ``too_long``)."""
    ids = list(tok(text, add_special_tokens=True)["input_ids"]) if text else []
    if ids and add_eos and tok.eos_token_id is not None and ids[-1] != tok.eos_token_id:
        ids.append(tok.eos_token_id)
    if ids and strip_bos and tok.bos_token_id is not None and ids[0] == tok.bos_token_id:
        ids = ids[1:]
    return ids


def encode_alpaca(tok, style: str, fields: tuple[str, str, str], train_on_inputs: bool) -> tuple[list, list]:
    instruction, extra, output = fields
    return encode_prompted(tok, alpaca_prompt(style, instruction, extra), output, train_on_inputs)


def encode_prompted(tok, prompt_text: str, output: str, train_on_inputs: bool) -> tuple[list, list]:
    """A prompt then its trained response and EOS, each tokenized on its own (Axolotl's
    instruction strategies, its user-defined ``type:`` mapping among them)."""
    prompt = _tokenize(tok, prompt_text, add_eos=False, strip_bos=False)
    response = _tokenize(tok, output, add_eos=True, strip_bos=True)
    labels = (list(prompt) if train_on_inputs else [-100] * len(prompt)) + response
    return prompt + response, labels


def encode_completion(tok, text: str) -> tuple[list, list]:
    ids = _tokenize(tok, text, add_eos=True, strip_bos=False)
    return ids, list(ids)


class RowEncoder:
    """(input_ids, labels) of any parsed row: chat rows through ``ChatEncoder`` (made on the
    first chat row, so alpaca and completion data train on base models without a template)."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self._chat = None

    @property
    def chat(self):
        if self._chat is None:
            from engine.data.masks import ChatEncoder

            self._chat = ChatEncoder(self.tok)
        return self._chat

    def encode_row(self, row, options=None):
        """An ``engine.data.masks.Encoded`` for the row; ``options``: the dataset's ``MaskOptions``
        (or a bool, train_on_inputs)."""
        from engine.data.masks import Encoded, MaskOptions

        if not isinstance(options, MaskOptions):
            options = MaskOptions(train_on_inputs=bool(options))
        if row.fmt.startswith("alpaca:"):
            style = row.fmt.split(":", 1)[1]
            return Encoded.of_lists(*encode_alpaca(self.tok, style, row.fields, options.train_on_inputs))
        if row.fmt == "custom":
            return Encoded.of_lists(*encode_prompted(self.tok, *row.fields, options.train_on_inputs))
        if row.fmt == "completion":
            return Encoded.of_lists(*encode_completion(self.tok, row.fields[0]))
        return self.chat.encode_row(row.messages, options, tools=getattr(row, "tools", None))
