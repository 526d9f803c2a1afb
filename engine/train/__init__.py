"""One fine-tuning run: the recipe (train.py), the SFTTrainer subclass, the callback, the
fault guard, several processes (dist), curriculum sampling, health bands, start-up checks.
May import evaluate (on-save probes), chat, model, data, config, run.
"""
