"""`python -m piperctl` (also what `accelerate launch -m piperctl` and `torchrun -m piperctl` run)."""

from piperctl.cli import main

if __name__ == "__main__":
    main()
