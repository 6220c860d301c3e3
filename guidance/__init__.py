"""Sampling: SyncCFG (which passes, how they combine), flow-matching solver schedules, the sampling loop."""
