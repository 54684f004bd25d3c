"""Stack: boots, kills and restarts the real processes on loopback."""
