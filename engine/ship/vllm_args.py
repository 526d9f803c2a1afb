"""The vLLM server arguments the commands here emit, as vLLM 0.34.0 (PyPI, 2026) defines them.

Vendored from the vllm-0.34.0 wheel's sources so that a printed command is checked against the
pinned version's names, offline (tests/test_vllm_lora.py compares them with an installed vLLM
where there is one):

- ``vllm/entrypoints/cli/serve.py``: ``vllm serve [model_tag] [options]`` (the
  ``python -m vllm.entrypoints.openai.api_server`` entry still runs but warns it is deprecated).
- ``vllm/engine/arg_utils.py`` ``EngineArgs.add_cli_args``: ``--dtype``, ``--max-model-len``,
  ``--quantization``, ``--served-model-name``; the LoRAConfig group: ``--enable-lora``
  (BooleanOptionalAction), ``--max-loras``, ``--max-lora-rank``, ``--lora-dtype``.
- ``vllm/entrypoints/common/cli_args.py``: ``FrontendArgs`` fields become ``--host``, ``--port``,
  ``--chat-template``, ``--lora-modules`` (a list; ``LoRAParserAction`` reads ``name=path``, or JSON
  when the item has a comma: ``{"name", "path", "base_model_name"}``).
- ``vllm/config/lora.py``: ``MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]``
  (``--max-lora-rank`` takes only these), ``max_loras`` default 1, ``ge=1``.
"""

from __future__ import annotations

VLLM_VERSION = "0.34.0"
SERVE = ("vllm", "serve")
FLAGS = frozenset(
    {
        "--dtype",
        "--max-model-len",
        "--quantization",
        "--served-model-name",
        "--host",
        "--port",
        "--chat-template",
        "--enable-lora",
        "--max-loras",
        "--max-lora-rank",
        "--lora-modules",
    }
)
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_flags(argv: list[str]) -> None:
    """Every ``--flag`` of a command is one the pinned vLLM defines (a bug here otherwise)."""
    unknown = [a for a in argv if a.startswith("--") and a not in FLAGS]
    if unknown:
        raise AssertionError(f"not vLLM {VLLM_VERSION} arguments: {unknown}")
