"""`python -m raycls`: the raycls command (what submitted jobs run, so uploaded code is used)."""

from raycls.cli import main

if __name__ == "__main__":
    main()
