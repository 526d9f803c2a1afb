"""Data: dataset readers, rendering with chat templates and loss masks, preparation, sampling.
May import config, run.
"""
