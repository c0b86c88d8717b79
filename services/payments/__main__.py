"""Entry point: `python -m services.payments`."""

from libs.common.messaging.runtime import run
from services.payments.service import main

if __name__ == "__main__":
    run("payments", main)
