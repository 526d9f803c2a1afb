"""One fine-tuning run: the recipe (train.py) with its resume point (resume) and the trainer it
builds (build), the SFTTrainer subclass, the callback, the fault guard (guard/, a module a
fault), several processes (dist), curriculum sampling (curriculum: the plan; curriculum_trainer:
its rows, sampler and records), health bands, start-up checks.
May import evaluate (on-save probes), chat, model, data, config, run.
"""
