"""Ticks once per `interval` seconds, `seconds / interval` times: for pause, resume and cancel.

Input: {"seconds": 30, "interval": 0.5}. It counts ticks, not wall-clock time, so a paused run
picks up where it stopped.
"""

import time


def handle(payload, ctx):
    options = payload if isinstance(payload, dict) else {}
    seconds = float(options.get("seconds", 30))
    interval = float(options.get("interval", 0.5))
    ticks = max(1, round(seconds / interval))
    for tick in range(1, ticks + 1):
        ctx.delta(f"tick {tick}\n")
        time.sleep(interval)
    return {"ticks": ticks}
