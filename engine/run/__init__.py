"""The run folder (logs/<run>/) and what lives in it: RunDir, the run log, the lock, the run
state, the control-file protocol, checkpoints and their markers, lineage, chat logs, jobs.
Standard library (and yaml) only; imports no other stage. Shared by trainer, cockpit and CLI.
"""
