"""Talking to a model: chat sessions and backends, the live-weights bridge, the generation
engine (KV cache, decode steps, adapter routing).
May import model, data, config, run.
"""
