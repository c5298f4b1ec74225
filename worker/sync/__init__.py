"""Where the pure engine meets storage and the sides: load, lock, decide, apply, record."""
