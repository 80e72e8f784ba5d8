"""`python -m lesionseg` = the `lesionseg` command."""

from .cli import main

main()
