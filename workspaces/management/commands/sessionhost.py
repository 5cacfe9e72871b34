"""`manage.py sessionhost`: the session host (see `workspaces.host`); SIGTERM or Ctrl-C stops
it, and every session it holds (their workspaces are kept)."""

import signal
import threading

from django.core.management.base import BaseCommand

from workspaces.host import SessionHost


class Command(BaseCommand):
    help = "Start, watch and stop session sandboxes, on commands from the API."

    def handle(self, *args, **options):
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        SessionHost().run(stop)
