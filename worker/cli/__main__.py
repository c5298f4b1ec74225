"""`python -m worker.cli`: the same as the `bbsync` command."""
from worker.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
