"""Returns its input unchanged."""


def handle(payload):
    return payload
