"""Load: the steady generator for soaks (asyncio, in process) and the Locust file for bursts (a subprocess)."""
