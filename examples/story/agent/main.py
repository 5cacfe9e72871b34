"""Streams a short story word by word; the output is the whole text.

Input: {"topic": "a lighthouse keeper", "delay": 0.05} (both optional) or a plain string topic.
"""

import time

STORY = (
    "Once upon a time there was {topic}. Every morning {topic} woke before the sun, "
    "made a pot of tea and listened to the sea. One day a letter arrived with no name on it, "
    "only a drawing of a door. {topic_cap} followed the drawing across three hills and found "
    "the door standing alone in a field. Behind it was the same field, only brighter. "
    "And that was enough."
)


def handle(payload, ctx):
    options = payload if isinstance(payload, dict) else {"topic": payload}
    topic = str(options.get("topic") or "a lighthouse keeper")
    delay = float(options.get("delay", 0.05))
    text = STORY.format(topic=topic, topic_cap=topic[:1].upper() + topic[1:])
    ctx.log(f"telling a story about {topic}")
    words = text.split(" ")
    for index, word in enumerate(words):
        yield word if index == len(words) - 1 else word + " "
        time.sleep(delay)
