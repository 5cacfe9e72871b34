"""Make sure an admin account exists, and say how to log in."""

import os
import secrets
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from core import config as env


class Command(BaseCommand):
    help = (
        "Create the admin account when no admin exists (AIMOS_ADMIN_USERNAME, AIMOS_ADMIN_EMAIL, "
        "AIMOS_ADMIN_PASSWORD; a generated password is written to var/admin-password)."
    )

    def handle(self, *args, **options):
        User = get_user_model()
        password_file = settings.VAR_DIR / "admin-password"
        admin = (
            User.objects.filter(is_superuser=True, is_active=True).order_by("date_joined").first()
        )
        if admin is None:
            username = env.string("AIMOS_ADMIN_USERNAME", "admin")
            email = env.string("AIMOS_ADMIN_EMAIL", "admin@localhost")
            password = env.string("AIMOS_ADMIN_PASSWORD")
            if not password:
                password = secrets.token_urlsafe(12)
                write_private(password_file, password + "\n")
            admin = User.objects.create_superuser(username=username, email=email, password=password)
            self.stdout.write(f"Created the admin account {username!r}.")
        if password_file.exists():
            if password_file.stat().st_mode & 0o077:
                password_file.chmod(0o600)
            where = f"password in {password_file}"
        else:
            where = "the password you set (AIMOS_ADMIN_PASSWORD)"
        self.stdout.write(f"Admin: log in at /admin/ as {admin.username!r} ({where}).")


def write_private(path: Path, text: str) -> None:
    """Replace `path` with a file holding `text` that only its owner may read: written aside
    with mode 0600, then renamed into place, so it is never readable by others, not even
    for a moment, and never seen half-written."""
    fd, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(draft, path)
    except BaseException:
        os.unlink(draft)
        raise
