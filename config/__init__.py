"""Settings and mapping tables: everything an operator configures, validated when loaded."""
