"""What every layer uses: errors, atomic writes, the cache, offline mode, optional extras, signals, seeding,
hardware (devices and precision), the process group of distributed runs, and the one registry helper."""
