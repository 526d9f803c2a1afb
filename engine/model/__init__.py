"""Models: loading a base (and adapters), attention choice, memory estimate, GPU sampling,
MFU, the tiny offline models and the demo data they train on.
May import data, config, run.
"""
