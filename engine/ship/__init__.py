"""After training: merge the adapter, quantize, serve, write the model card, publish.
May import train, evaluate, chat, model, data, config, run.
"""
