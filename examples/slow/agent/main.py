"""Ticks once per `interval` seconds for `seconds` seconds: for trying pause, resume and cancel.

Input: {"seconds": 30, "interval": 0.5}.
"""

import time


def handle(payload, ctx):
    options = payload if isinstance(payload, dict) else {}
    seconds = float(options.get("seconds", 30))
    interval = float(options.get("interval", 0.5))
    ticks = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        ticks += 1
        ctx.delta(f"tick {ticks}\n")
        time.sleep(interval)
    return {"ticks": ticks}
