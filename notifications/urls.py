"""Webhook routes, included by `aimos.api_urls` (so served under /api/v1/ and /api/)."""

from core.routers import OptionalSlashRouter
from notifications import api

router = OptionalSlashRouter()
router.register("webhooks", api.WebhookViewSet, basename="webhook")

urlpatterns = router.urls
