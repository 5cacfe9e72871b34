"""`manage.py build_base_image [--tag T] [--force]`: the Docker backend's base image, offline."""

from __future__ import annotations

from typing import Any

import docker.errors
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from sandbox.base_image import BaseImageError, build_base_image


class Command(BaseCommand):
    # Building an image does not depend on the rest of the project being importable.
    requires_system_checks: list[str] = []
    help = (
        "Build the Docker backend's Python base image from Debian's mirror with debootstrap "
        "(no registry). Does nothing when the image exists, unless --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--tag",
            default=settings.AIMOS_DOCKER_BASE_IMAGE,
            help="image tag (default: AIMOS_DOCKER_BASE_IMAGE, %(default)s)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="bootstrap the root filesystem again and re-import it, even if cached",
        )

    def handle(self, *args: Any, tag: str, force: bool, **options: Any) -> None:
        verbosity = options["verbosity"]

        def say(line: str) -> None:
            if verbosity >= 1:
                self.stdout.write(line)

        try:
            result = build_base_image(
                tag,
                var_dir=settings.VAR_DIR,
                mirror=settings.AIMOS_DOCKER_DEBIAN_MIRROR,
                force=force,
                say=say,
            )
        except BaseImageError as exc:
            raise CommandError(str(exc)) from exc
        except docker.errors.DockerException as exc:
            raise CommandError(f"the Docker engine is not usable: {exc}") from exc
        self.stdout.write(
            self.style.SUCCESS(f"{result.tag}: {result.action} ({result.image_id[:19]})")
        )
