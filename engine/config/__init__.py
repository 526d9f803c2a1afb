"""The run config: the pydantic schema by concern, Axolotl's key tables, loading and messages,
the files bundled with the package (assets/).
May import run (and engine.errors). No torch at import.
"""
