"""``python -m trait_lora.train``: see :mod:`trait_lora.train.cli`."""

from trait_lora.train.cli import run

if __name__ == "__main__":
    run()
