"""The sync engine: pure functions from (event, shadow, current state, tables) to decisions.

Nothing in this package does I/O, so every rule of the merge can be tested in microseconds and
the same code serves both directions.
"""
