"""`python -m zoo.cli ...` runs the `zoo` command."""

from zoo.cli import main

main()
