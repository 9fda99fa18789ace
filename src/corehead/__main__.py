"""`python -m corehead` (and `accelerate launch -m corehead ...`): the command line."""

from corehead.cli import main

main()
