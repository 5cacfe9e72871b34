"""Dashboard pages of accounts: log in and out, API keys."""

import math

from django import forms
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts import services
from accounts.models import ApiKey
from accounts.throttles import AuthRateThrottle
from core.errors import ServiceError
from core.pages import error_text, found

# Where a new key waits between the POST that made it and the page that shows it, once.
NEW_KEY_SESSION = "accounts:new-api-key"


class LoginForm(AuthenticationForm):
    """Username or email, as the API's login accepts."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Wrong username, email or password.",
    }

    username = forms.CharField(
        label="Username or email",
        max_length=254,
        widget=forms.TextInput(attrs={"autofocus": True, "autocomplete": "username"}),
    )

    def clean(self):
        if self.cleaned_data.get("username"):
            self.cleaned_data["username"] = services.resolve_username(self.cleaned_data["username"])
        return super().clean()


class LoginView(auth_views.LoginView):
    """The dashboard's login. Attempts count against the same per-IP `auth` rate as the API's
    login, so the page is no way around it for a password guesser."""

    template_name = "accounts/login.html"
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def post(self, request, *args, **kwargs):
        throttle = AuthRateThrottle()
        if throttle.allow_request(request, self):
            return super().post(request, *args, **kwargs)
        # Refused before the password is even looked at.
        wait = math.ceil(throttle.wait() or 1)
        form = self.get_form_class()(request, initial={"username": request.POST.get("username")})
        context = self.get_context_data(
            form=form, refusal=f"Too many attempts. Try again in {wait} seconds."
        )
        response = self.render_to_response(context, status=429)
        response["Retry-After"] = str(wait)
        return response


class LogoutView(auth_views.LogoutView):
    """POST only (Django's rule): a link cannot log anyone out."""


class ApiKeyForm(forms.Form):
    name = forms.CharField(
        max_length=100, widget=forms.TextInput(attrs={"placeholder": "ci-deploy"})
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires",
        help_text="Optional; never when empty.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )


@never_cache
@login_required
def api_keys(request):
    """The user's keys; a key just created is shown here once, then never again."""
    form = ApiKeyForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                key, raw = services.create_api_key(
                    request.user,
                    name=form.cleaned_data["name"],
                    expires_at=form.cleaned_data["expires_at"],
                )
            except ServiceError as exc:
                form.add_error(None, error_text(exc))
            else:
                # Post/redirect/get: the key rides in the session to the next page view only,
                # so reloading that page does not show it (nor create another).
                request.session[NEW_KEY_SESSION] = {"id": str(key.pk), "raw": raw}
                return redirect("api-keys")
    new_key = request.session.pop(NEW_KEY_SESSION, None)
    keys = ApiKey.objects.for_user(request.user).order_by("revoked_at", "-created_at")
    return render(
        request,
        "accounts/api_keys.html",
        {"form": form, "keys": keys, "new_key": new_key},
        status=400 if form.errors else 200,
    )


@require_POST
@login_required
def revoke_api_key(request, key_id):
    key = found(services.access_api_key, request.user, key_id)
    services.revoke_api_key(key)
    messages.success(request, f"The key “{key.name}” is revoked: it no longer works.")
    return redirect("api-keys")
