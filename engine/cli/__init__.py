"""The command line's engine side: headless training and check, the multi-process launcher,
the extra sub-commands, start-up checks. The only code that sees argparse.
May import every stage below.
"""
