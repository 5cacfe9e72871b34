"""Pack an agent folder (aimos.yaml + code) into a .tar.gz ready to upload."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from agents.archive import pack_directory
from agents.manifest import ManifestError, load_manifest


class Command(BaseCommand):
    help = "Pack agent folders into .tar.gz archives (checking their manifest first)."

    def add_arguments(self, parser):
        parser.add_argument("folders", nargs="+", type=Path)
        parser.add_argument("--out", type=Path, default=Path("dist/examples"))

    def handle(self, *args, folders, out, **options):
        out.mkdir(parents=True, exist_ok=True)
        for folder in folders:
            try:
                manifest = load_manifest(folder)
            except ManifestError as exc:
                raise CommandError(f"{folder}: {exc.detail} {exc.errors}") from None
            target = pack_directory(folder, out / f"{manifest['name']}.tar.gz")
            self.stdout.write(str(target))
