"""Faults: Toxiproxy toxics and links, signals, a held SQLite lock, and the nemesis that schedules them."""
