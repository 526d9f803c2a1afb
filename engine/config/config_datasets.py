"""One entry of ``datasets:``: where the rows are and how a row becomes a conversation (Axolotl's
dataset keys). The type names and the split syntax are ``engine.config.dataset_kinds``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator, model_validator


def usable_path(v: str) -> str:
    if "\x00" in v or not v.strip():
        raise ValueError("a path must be non-empty and cannot contain a NUL byte")
    return v


PathText = Annotated[str, AfterValidator(usable_path)]
"""A path key's value: non-empty, no NUL byte (the OS would refuse it later, less clearly)."""


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

    @model_validator(mode="before")
    @classmethod
    def _not_set(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        from engine.config.dataset_kinds import canonical_type

        return canonical_type(v)

    @field_validator("split")
    @classmethod
    def _split(cls, v: str | None) -> str | None:
        from engine.config.dataset_kinds import parse_split

        if v is not None:
            parse_split(v)
        return v
