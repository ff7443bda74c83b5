"""Deploying real Step 3.5 / 3.7 Flash: hardware profiles, memory planning, engine commands.

The planner is pure arithmetic over published facts (FORMATS.md §5); the launcher and the
compose writer turn a plan into a running engine or a deployment folder.
"""
