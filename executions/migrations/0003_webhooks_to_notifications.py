# Webhook and WebhookDelivery moved to the notifications app. Their tables stay as they are
# (the models keep db_table): only the migration state forgets them here, and
# notifications.0001_initial takes them up.

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("executions", "0002_webhook_webhookdelivery"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="WebhookDelivery"),
                migrations.DeleteModel(name="Webhook"),
            ],
            database_operations=[],
        ),
    ]
