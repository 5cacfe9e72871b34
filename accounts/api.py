"""Accounts API: registration, JWT login/refresh/logout, the current user, API keys."""

from django.contrib.auth import logout as session_logout
from django.contrib.auth.validators import UnicodeUsernameValidator
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework_simplejwt.tokens import AccessToken

from accounts import services
from accounts.models import ApiKey, User
from accounts.throttles import AnonRateThrottle, AuthRateThrottle
from core.errors import error_responses as errors

# --- Serializers ----------------------------------------------------------------------------


class UserSerializer(serializers.ModelSerializer):
    is_admin = serializers.BooleanField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)

    class Meta:
        model = User
        fields = [
            "id",
            "username",
            "email",
            "full_name",
            "is_active",
            "is_admin",
            "created_at",
            "last_login",
        ]
        read_only_fields = fields


class RegisterSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, validators=[UnicodeUsernameValidator()])
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(write_only=True, trim_whitespace=False, max_length=128)
    full_name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")


class LoginSerializer(serializers.Serializer):
    """JSON or form data; `username` may hold an email, or `email` may be sent instead."""

    username = serializers.CharField(required=False)
    email = serializers.CharField(required=False)
    password = serializers.CharField(trim_whitespace=False)

    def validate(self, attrs):
        identifier = attrs.get("username") or attrs.get("email")
        if not identifier:
            raise serializers.ValidationError({"username": "A username or email is required."})
        return {"identifier": identifier, "password": attrs["password"]}


class LoginSchema(OpenApiSerializerExtension):
    """In the schema, a username or an email is required: a rule of `validate`."""

    target_class = LoginSerializer

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        return {**schema, "anyOf": [{"required": ["username"]}, {"required": ["email"]}]}


class TokenPairSerializer(serializers.Serializer):
    access_token = serializers.CharField()
    refresh_token = serializers.CharField()
    token_type = serializers.CharField(default="bearer")
    expires_in = serializers.IntegerField(help_text="Lifetime of the access token in seconds.")


class RefreshSerializer(serializers.Serializer):
    refresh_token = serializers.CharField()


class LogoutSerializer(serializers.Serializer):
    refresh_token = serializers.CharField(
        required=False,
        help_text="Blacklisted when given; the access token of the request is revoked.",
    )


class ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "key_prefix", "created_at", "expires_at", "last_used_at"]
        read_only_fields = ["id", "key_prefix", "created_at", "last_used_at"]


class NewApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(
        read_only=True, help_text="The whole key. Shown only in this response."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


# --- Views ----------------------------------------------------------------------------------


class PublicView(GenericAPIView):
    """No credentials needed or looked at: a stale token sent along must not block a login."""

    authentication_classes: list = []
    permission_classes = [AllowAny]


class RegisterView(PublicView):
    serializer_class = RegisterSerializer
    throttle_classes = [AnonRateThrottle, AuthRateThrottle]

    @extend_schema(
        operation_id="auth_register",
        responses={201: UserSerializer, **errors(400, 415, 429)},
        auth=[],
    )
    def post(self, request):
        """Create an account. Username and email must be free; the password must pass the
        server's password rules."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = services.register_user(**serializer.validated_data)
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)


class LoginView(PublicView):
    serializer_class = LoginSerializer
    throttle_classes = [AnonRateThrottle, AuthRateThrottle]

    @extend_schema(
        operation_id="auth_login",
        responses={200: TokenPairSerializer, **errors(400, 401, 415, 429)},
        auth=[],
    )
    def post(self, request):
        """Exchange a username (or email) and password for an access and a refresh token."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = services.login(**serializer.validated_data)
        return Response(TokenPairSerializer(tokens).data)


class RefreshView(PublicView):
    serializer_class = RefreshSerializer

    @extend_schema(
        operation_id="auth_refresh",
        responses={200: TokenPairSerializer, **errors(400, 401, 429)},
        auth=[],
    )
    def post(self, request):
        """Trade a refresh token for a new pair. The old refresh token stops working."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = services.refresh_tokens(serializer.validated_data["refresh_token"])
        return Response(TokenPairSerializer(tokens).data)


class LogoutView(GenericAPIView):
    serializer_class = LogoutSerializer

    @extend_schema(
        operation_id="auth_logout",
        responses={204: OpenApiResponse(description="Logged out."), **errors(400, 401)},
    )
    def post(self, request):
        """Blacklist the refresh token, revoke the access token used for this request, and
        end the dashboard session if that is how the request came."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        access = request.auth if isinstance(request.auth, AccessToken) else None
        services.logout(
            request.user,
            refresh_token=serializer.validated_data.get("refresh_token"),
            access_token=access,
        )
        if request.auth is None:
            session_logout(request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(GenericAPIView):
    serializer_class = UserSerializer

    @extend_schema(operation_id="auth_me", responses={200: UserSerializer, **errors(401)})
    def get(self, request):
        """The user the request is authenticated as."""
        return Response(self.get_serializer(request.user).data)


@extend_schema_view(
    list=extend_schema(responses={200: ApiKeySerializer(many=True), **errors(400, 401)})
)
class ApiKeyViewSet(
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own API keys. The secret is returned once, when the key is created."""

    serializer_class = ApiKeySerializer

    def get_queryset(self):
        return ApiKey.objects.for_user(self.request.user).not_revoked()

    # JSON only in the schema: a form cannot carry the null that `expires_at` may be.
    @extend_schema(
        request={"application/json": ApiKeySerializer},
        responses={201: NewApiKeySerializer, **errors(400, 401)},
    )
    def create(self, request, *args, **kwargs):
        """Create a key. The response holds the whole key: the only time it is shown."""
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw_key = services.create_api_key(request.user, **serializer.validated_data)
        body = {**ApiKeySerializer(key).data, "key": raw_key}
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses={204: OpenApiResponse(description="Revoked."), **errors(401, 404)},
    )
    def destroy(self, request, *args, **kwargs):
        """Revoke the key: it is refused from the next request on."""
        services.revoke_api_key(services.access_api_key(request.user, kwargs["pk"]))
        return Response(status=status.HTTP_204_NO_CONTENT)
