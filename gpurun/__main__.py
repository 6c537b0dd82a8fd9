"""`python -m gpurun` runs the command line."""

from gpurun.cli import main

main()
