"""Evaluation: the built-in suites and their sandbox, lm-eval, on-save probes, the checklist.
May import chat, model, data, config, run.
"""
