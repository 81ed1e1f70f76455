"""``python -m harness.cli``: the same as the ``esolm`` command."""

from harness.cli import main

if __name__ == "__main__":
    main()
