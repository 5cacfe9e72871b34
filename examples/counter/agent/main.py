"""Counts up to `to`, checkpointing its state after each step and resuming from `ctx.state`.

Input: {"to": 5, "delay": 0.1}. Output: {"count": n, "resumed_from": k or null, "steps": [...]}.
"""

import time


def handle(payload, ctx):
    options = payload if isinstance(payload, dict) else {}
    target = int(options.get("to", 5))
    delay = float(options.get("delay", 0.1))
    state = ctx.state or {"count": 0, "steps": []}
    resumed_from = state["count"] if ctx.state else None
    count, steps = state["count"], list(state["steps"])
    while count < target:
        count += 1
        steps.append(count)
        ctx.delta(f"{count} ")
        ctx.checkpoint({"count": count, "steps": steps}, label=f"step {count}")
        time.sleep(delay)
    return {"count": count, "resumed_from": resumed_from, "steps": steps}
