"""The run folder (logs/<run>/) and what lives in it: RunDir, the run log and its declared record
kinds (records.py), the lock, the run state, the control-file protocol, checkpoints and their
markers, lineage, chat logs, jobs.
Standard library, yaml and msgspec (a declared dependency: the typed run-log records) only;
imports no other stage but engine.errors. Shared by trainer, cockpit and CLI.
"""
