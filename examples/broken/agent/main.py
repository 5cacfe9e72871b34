"""Always fails: for seeing how a failed run looks."""


def handle(payload):
    raise RuntimeError(f"broken on purpose (input: {payload!r})")
