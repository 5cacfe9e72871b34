"""System metrics: samples of the host taken by the workers, and when the last one was taken."""

from django.db import models
from django.utils import timezone


class MetricSample(models.Model):
    """The host and the platform at one moment, as the worker that took it saw them.

    Percentages are 0..100; `network_io` is kilobytes (1000 bytes) per second, sent plus
    received, over the short window the sample measures CPU in. Samples older than
    AIMOS_METRICS_RETENTION_HOURS are deleted when a new one is taken.
    """

    timestamp = models.DateTimeField(default=timezone.now, db_index=True)
    host = models.CharField(max_length=255, blank=True)
    cpu_usage = models.FloatField()
    memory_usage = models.FloatField()
    disk_usage = models.FloatField()
    network_io = models.FloatField()
    active_agents_count = models.PositiveIntegerField()
    system_health_score = models.FloatField()

    class Meta:
        ordering = ["timestamp"]

    def __str__(self) -> str:
        return f"{self.timestamp:%Y-%m-%d %H:%M:%S} on {self.host or '?'}"


class SamplingState(models.Model):
    """One row: when the last sample was taken, shared by every worker.

    Whoever moves `last_sample_at` forward with a conditional update takes the next sample,
    so several workers (on several hosts) sample at most once per interval between them.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    last_sample_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"last sample at {self.last_sample_at}"
