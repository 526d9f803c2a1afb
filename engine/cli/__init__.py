"""The command line's engine side: headless training and check, the multi-process launcher,
the extra sub-commands, the post-training steps' registry (``steps/``: one module a step,
read by the cockpit's ship menu too), start-up checks. The only code that sees argparse.
May import every stage below.
"""
