"""Dashboard pages of webhooks: the list and its form (a new webhook's secret shown once), one
webhook with its deliveries, enabling and disabling it, and sending a delivery again."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from core.errors import ServiceError
from core.pages import add_to_form, found, outcome
from notifications import services
from notifications.models import DeliveryStatus, Webhook

PAGE_SIZE = 25

# Where a new webhook's signing secret waits for the page that shows it, once.
NEW_SECRET_SESSION = "executions:new-webhook-secret"


class WebhookForm(forms.Form):
    url = forms.URLField(
        label="URL",
        max_length=2000,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"placeholder": "https://example.com/hooks/aimos"}),
        help_text="Must resolve to a public address.",
    )
    events = forms.MultipleChoiceField(
        choices=[("*", "Every event")] + [(name, name) for name in services.EVENTS],
        widget=forms.CheckboxSelectMultiple,
        initial=["*"],
    )
    description = forms.CharField(required=False, max_length=200)


@login_required
def webhook_list(request):
    """The user's webhooks, and the form that adds one (its secret is shown once)."""
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            webhook = services.create_webhook(
                request.user,
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
                description=form.cleaned_data["description"],
            )
        except ServiceError as exc:
            add_to_form(form, exc)
        else:
            request.session[NEW_SECRET_SESSION] = {"id": str(webhook.pk), "secret": webhook.secret}
            messages.success(request, "Webhook added. Copy its signing secret now.")
            return redirect("webhook-detail", webhook_id=webhook.pk)
    hooks = (
        Webhook.objects.for_user(request.user)
        .annotate(
            delivery_count=Count("deliveries"),
            failed_count=Count("deliveries", filter=Q(deliveries__status=DeliveryStatus.FAILED)),
        )
        .order_by("-created_at")
    )
    return render(
        request,
        "notifications/webhook_list.html",
        {"form": form, "webhooks": hooks},
        status=400 if form.errors else 200,
    )


@never_cache
@login_required
def webhook_detail(request, webhook_id):
    webhook = found(services.access_webhook, request.user, webhook_id)
    secret = request.session.get(NEW_SECRET_SESSION)
    if secret and secret["id"] == str(webhook.pk):
        request.session.pop(NEW_SECRET_SESSION)
    else:
        secret = None
    deliveries = Paginator(webhook.deliveries.order_by("-created_at"), PAGE_SIZE)
    return render(
        request,
        "notifications/webhook_detail.html",
        {
            "webhook": webhook,
            "secret": secret,
            "page": deliveries.get_page(request.GET.get("page")),
        },
    )


@require_POST
@login_required
def webhook_toggle(request, webhook_id):
    """Pause the webhook's deliveries, or start them again."""
    webhook = found(services.access_webhook, request.user, webhook_id)
    to = reverse("webhook-detail", args=[webhook.pk])
    try:
        services.update_webhook(webhook, is_active=not webhook.is_active)
    except ServiceError as exc:
        return outcome(request, to, error=exc)
    state = "enabled" if webhook.is_active else "disabled: no event is sent to it"
    return outcome(request, to, ok=f"Webhook {state}.")


@require_POST
@login_required
def delivery_redeliver(request, webhook_id, delivery_id):
    webhook = found(services.access_webhook, request.user, webhook_id)
    delivery = found(services.access_delivery, webhook, delivery_id)
    to = reverse("webhook-detail", args=[webhook.pk])
    try:
        services.redeliver(delivery)
    except ServiceError as exc:
        return outcome(request, to, error=exc)
    return outcome(request, to, ok=f"{delivery.event} queued to be sent again.")
