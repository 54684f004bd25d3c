"""Checkers: the per-run invariants of gate A, and the judges of a whole history (exactly-once, rates, RTO, trends)."""
