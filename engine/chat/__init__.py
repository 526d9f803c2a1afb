"""Talking to a model: requests, events and presets (chat.py), checkpoints as adapters beside one
base (adapters.py), a chat with the model being trained (on_training.py), chat backends, the
live-weights bridge, the generation engine (KV cache, decode steps, adapter routing).
May import model, data, config, run.
"""
