from rest_framework.authentication import SessionAuthentication as DRFSessionAuthentication
from rest_framework_simplejwt.authentication import JWTAuthentication


class ApiKeyAuthentication(DRFSessionAuthentication):
    def authenticate(self, request):
        return None


class BearerTokenAuthentication(JWTAuthentication):
    pass


class SessionAuthentication(DRFSessionAuthentication):
    pass
