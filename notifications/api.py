"""Webhooks API: the caller's webhooks, their deliveries, and redelivery."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from core.errors import error_responses as errors
from notifications import services
from notifications.models import Webhook, WebhookDelivery


class WebhookSerializer(serializers.ModelSerializer):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=[*services.EVENTS, "*"]),
        min_length=1,
        help_text=f'Event names ({", ".join(services.EVENTS)}) or ["*"].',
    )

    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "description", "is_active", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class NewWebhookSerializer(WebhookSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="Shown once: verify signatures with it."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event",
            "payload",
            "status",
            "attempts",
            "response_status",
            "error",
            "duration_ms",
            "log",
            "created_at",
            "delivered_at",
        ]
        read_only_fields = fields


WEBHOOK_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
DELIVERY_ID = OpenApiParameter("delivery_id", OpenApiTypes.STR, OpenApiParameter.PATH)


@extend_schema_view(
    list=extend_schema(responses={200: WebhookSerializer(many=True), **errors(400, 401)}),
    retrieve=extend_schema(
        parameters=[WEBHOOK_ID], responses={200: WebhookSerializer, **errors(401, 404)}
    ),
    partial_update=extend_schema(
        parameters=[WEBHOOK_ID], responses={200: WebhookSerializer, **errors(400, 401, 404)}
    ),
    update=extend_schema(
        parameters=[WEBHOOK_ID], responses={200: WebhookSerializer, **errors(400, 401, 404)}
    ),
    destroy=extend_schema(
        parameters=[WEBHOOK_ID],
        responses={204: OpenApiResponse(description="Deleted."), **errors(401, 404)},
    ),
)
class WebhookViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's webhooks. The signing secret is returned once, when the webhook is made."""

    serializer_class = WebhookSerializer

    def get_queryset(self):
        return Webhook.objects.for_user(self.request.user).order_by("-created_at")

    def get_object(self):
        return services.access_webhook(self.request.user, self.kwargs["pk"])

    @extend_schema(responses={201: NewWebhookSerializer, **errors(400, 401)})
    def create(self, request):
        """Register a URL for some events; it must resolve to a public address."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        webhook = services.create_webhook(request.user, **serializer.validated_data)
        return Response(NewWebhookSerializer(webhook).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        services.delete_webhook(instance)

    def perform_update(self, serializer):
        serializer.instance = services.update_webhook(
            serializer.instance, **serializer.validated_data
        )

    @extend_schema(
        parameters=[WEBHOOK_ID],
        responses={200: DeliverySerializer(many=True), **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["get"], serializer_class=DeliverySerializer)
    def deliveries(self, request, pk=None):
        """Every delivery of this webhook, newest first, with the log of its attempts."""
        page = self.paginate_queryset(self.get_object().deliveries.order_by("-created_at"))
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)

    @extend_schema(
        parameters=[WEBHOOK_ID, DELIVERY_ID],
        request=None,
        responses={202: DeliverySerializer, **errors(401, 404, 409)},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"deliveries/(?P<delivery_id>[^/.]+)/redeliver",
        serializer_class=DeliverySerializer,
    )
    def redeliver(self, request, pk=None, delivery_id=None):
        """Send this delivery's event again (same id and payload, signed anew); a delivery still
        being attempted (pending) is refused with 409."""
        delivery = services.access_delivery(self.get_object(), delivery_id)
        services.redeliver(delivery)
        return Response(DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
