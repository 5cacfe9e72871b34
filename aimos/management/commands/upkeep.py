"""`manage.py upkeep`: the upkeep process (see `aimos.upkeep`); SIGTERM or Ctrl-C stops it."""

import signal
import threading

from django.core.management.base import BaseCommand

from aimos import upkeep


class Command(BaseCommand):
    help = "Repair what dead workers left behind, every AIMOS_MAINTENANCE_INTERVAL seconds."

    def handle(self, *args, **options):
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        upkeep.run(stop)
