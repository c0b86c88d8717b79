"""Entry point: `python -m services.provider`."""

from libs.common.messaging.runtime import run
from services.provider.service import main

if __name__ == "__main__":
    run("provider", main)
