"""Running bbsync from real processes on one machine: the stack the demo, the integration tests
and the benchmarks start (stack), and the demo itself (demo)."""
