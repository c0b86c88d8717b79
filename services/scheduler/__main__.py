"""Entry point: `python -m services.scheduler`."""

from libs.common.messaging.runtime import run
from services.scheduler.service import main

if __name__ == "__main__":
    run("scheduler", main)
