"""One entry of ``datasets:``: where the rows are and how a row becomes a conversation (Axolotl's
dataset keys). The type names and the split syntax are ``engine.config.dataset_kinds``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator


def usable_path(v: str) -> str:
    if "\x00" in v or not v.strip():
        raise ValueError("a path must be non-empty and cannot contain a NUL byte")
    return v


THINKING_KEYS = Literal["reasoning_content", "thinking", "reasoning"]  # what the mask code reads
PathText = Annotated[str, AfterValidator(usable_path)]
"""A path key's value: non-empty, no NUL byte (the OS would refuse it later, less clearly)."""


class CustomFormat(BaseModel):
    """Axolotl's user-defined prompt (``type:`` as a mapping): the prompt is ``system_format`` with
    the system text, then ``format`` (or ``no_input_format`` for rows without input) with the
    instruction and input; the output follows and is trained, with the EOS."""

    model_config = ConfigDict(extra="forbid")

    field_instruction: str = "instruction"
    field_input: str | None = "input"
    field_output: str = "output"
    field_system: str | None = None
    system_prompt: str | None = None
    system_format: str | None = None
    format: str
    no_input_format: str | None = None
    field: str | None = None

    @model_validator(mode="after")
    def _formats(self):
        for name in ("format", "no_input_format", "system_format"):
            text = getattr(self, name)
            if text is None:
                continue
            allowed = {"system"} if name == "system_format" else {"instruction", "input"}
            try:
                text.format(**dict.fromkeys(allowed, ""))
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"`{name}` may use only {{{'}, {'.join(sorted(allowed))}}} ({e})") from None
        if self.no_input_format and "{input}" in self.no_input_format:
            raise ValueError("`no_input_format` cannot use {input} (it is for rows without an input)")
        return self


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: PathText
    """A local file (.jsonl, .jsonl.gz, .json, .parquet, .arrow), a folder of them, or a hub
    dataset id already in the local Hugging Face cache (nothing is downloaded)."""
    type: str = "chat_template"
    """chat_template: OpenAI ``messages``; sharegpt: ``conversations`` with from/value; alpaca:
    instruction/input/output in Axolotl's ``### Instruction:`` prompt; completion: raw ``text``.
    Also Axolotl's ``chat_template.default``, ``alpaca:chat`` and ``alpaca_chat``."""
    field_messages: str | None = None
    """The key holding the turns (default ``messages``, or ``conversations`` for sharegpt)."""
    roles_to_train: list[str] | None = None
    """Roles whose turns carry loss (Axolotl's; default ``[assistant]``). ``train_on_inputs: true``
    trains every turn's text (never the template's headers)."""
    train_on_eos: Literal["turn", "last", "all", "none"] = "turn"
    """End tokens (the end-of-turn marker the template writes after a turn, and the EOS after the
    last one) that carry loss: turn: those of every trained turn; last: only the last trained
    turn's; all: those of every turn; none: no end token (the model never learns to stop)."""
    message_field_training: str | None = None
    """The message key of a per-message boolean that overrides roles_to_train for that turn
    (Axolotl's). Unset: a boolean ``training`` or ``train`` key is read where a message has one."""
    message_property_mappings: dict[str, str] | None = None
    """Which key of a turn holds what, e.g. ``{role: from, content: value}`` (FineTome, SlimOrca)."""
    message_field_role: str | None = None
    """Older spelling of ``message_property_mappings.role``."""
    message_field_content: str | None = None
    """Older spelling of ``message_property_mappings.content``."""
    roles: dict[str, list[str]] | None = None
    """Our role -> the data's role names, e.g. ``{user: [human], assistant: [gpt]}`` (added to the
    usual human/gpt/user/assistant/system names)."""
    drop_system_message: bool = False
    """Leave system turns out of every conversation."""
    split: str | None = None
    """The rows to use: ``train``, or a slice such as ``train[:20%]`` / ``train[10:100]``."""
    field: str | None = None
    """completion: the key with the text (default ``text``)."""
    name: str | None = None
    """A hub dataset's configuration name."""
    data_files: list[str] | str | None = None
    """Files inside a hub dataset or folder to read (default: all of them)."""
    ds_type: str | None = None
    """Axolotl's file-format hint (json, parquet, arrow); the format is read from the file here."""
    field_tools: str | None = None
    """The row key holding its tool definitions, handed to the chat template (default ``tools``)."""
    field_thinking: str | None = None
    """The message key holding a turn's reasoning in the data (default ``reasoning_content``)."""
    template_thinking_key: THINKING_KEYS | None = None
    """The message key the chat template reads reasoning from (default ``reasoning_content``;
    harmony-format templates read ``thinking``)."""
    train_on_eot: Literal["turn", "last", "all", "none"] | None = None
    """As train_on_eos, for turn ends that are ``eot_tokens`` (default: as train_on_eos)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables for the chat template, e.g. ``{enable_thinking: false}`` (Qwen3) or
    ``{reasoning_effort: low}`` (harmony)."""
    chat_template: str | None = None
    """Axolotl's per-dataset template: only the config's own template is used here (a different
    one is refused at load, with the reason)."""
    revision: str | None = None
    """A hub dataset's revision: refused here (the local cache's snapshot is what is read)."""
    trust_remote_code: bool | None = None
    """Dataset loading scripts: only ``false`` (rows come from data files, never from code)."""
    message_field_training_detail: str | None = None
    """Axolotl's per-character training offsets inside a message: refused, with the reason."""

    custom_format: CustomFormat | None = None
    """The mapping of a custom ``type:`` (set from it; ``type`` then reads ``custom``)."""

    @model_validator(mode="before")
    @classmethod
    def _not_set(cls, data):
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None}
        if isinstance(data.get("type"), dict):  # Axolotl's custom prompt mapping
            data["custom_format"], data["type"] = data["type"], "custom"
        return data

    @model_validator(mode="after")
    def _custom(self):
        if self.type == "custom" and self.custom_format is None:
            raise ValueError(
                "`type: custom` needs the mapping itself: type: {field_instruction: ..., format: ...}"
            )
        return self

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        from engine.config.dataset_kinds import canonical_type

        return canonical_type(v)

    @field_validator("chat_template")
    @classmethod
    def _chat_template(cls, v: str | None) -> str | None:
        if v not in (None, "tokenizer_default"):
            raise ValueError(
                "a per-dataset chat template is not supported: every dataset of a run goes through one "
                "template (the run's `chat_template`); set the top-level `chat_template` and remove this one"
            )
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "a dataset `revision` cannot be honoured: nothing is downloaded here, the locally cached "
                "snapshot is read; download that revision into the cache and remove `revision`"
            )
        return v

    @field_validator("trust_remote_code")
    @classmethod
    def _remote_code(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError(
                "datasets are read from their data files, never by running a loading script; "
                "use a dataset with data files and remove `trust_remote_code`"
            )
        return v

    @field_validator("message_field_training_detail")
    @classmethod
    def _detail(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError(
                "per-character training offsets inside a message are not supported; split the message, "
                "or mark whole messages with `message_field_training`"
            )
        return v

    @field_validator("split")
    @classmethod
    def _split(cls, v: str | None) -> str | None:
        from engine.config.dataset_kinds import parse_split

        if v is not None:
            parse_split(v)
        return v
