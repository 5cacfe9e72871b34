"""Constants and small helpers shared by the accounts tests."""

PASSWORD = "correct-horse-battery"  # what the root conftest gives owner, other and admin

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
REGISTER = "/api/v1/auth/register"
KEYS = "/api/v1/api-keys"


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def api_key(key: str) -> dict:
    return {"HTTP_X_API_KEY": key}
