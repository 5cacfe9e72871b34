"""Make sure an admin account exists, and say how to log in."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from aimos import config as env


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
                password_file.write_text(password + "\n")
                password_file.chmod(0o600)
            admin = User.objects.create_superuser(username=username, email=email, password=password)
            self.stdout.write(f"Created the admin account {username!r}.")
        where = (
            f"password in {password_file}"
            if password_file.exists()
            else "the password you set (AIMOS_ADMIN_PASSWORD)"
        )
        self.stdout.write(f"Admin: log in at /admin/ as {admin.username!r} ({where}).")
