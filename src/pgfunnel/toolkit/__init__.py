"""The 53300 toolkit: diagnose, reap, advise, check, alerts."""
