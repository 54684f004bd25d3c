"""History: every operation and fault window of a run, the evidence gathered after it, and resource samples."""
