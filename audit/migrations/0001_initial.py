"""The audit models move here from the campaigns app, tables and rows untouched.

State only: the tables were created by campaigns 0001 and keep their data. The content
types move with them, so the permissions granted on them (and the roles holding those
permissions) stay attached.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

MODELS = ("auditevent", "auditchainhead")


def move_content_types(apps: Any, schema_editor: Any) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="campaigns", model__in=MODELS).update(app_label="audit")


def move_content_types_back(apps: Any, schema_editor: Any) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    content_type.objects.filter(app_label="audit", model__in=MODELS).update(app_label="campaigns")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("campaigns", "0003_field_labels"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(move_content_types, move_content_types_back),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditChainHead",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("seq", models.BigIntegerField(default=0)),
                        ("hash", models.CharField(default="0" * 64, max_length=64)),
                    ],
                    options={"db_table": "campaigns_auditchainhead"},
                ),
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("seq", models.BigIntegerField(unique=True)),
                        ("created_at", models.DateTimeField()),
                        ("actor_id", models.BigIntegerField(blank=True, null=True)),
                        ("actor_label", models.CharField(blank=True, default="", max_length=254)),
                        ("action", models.CharField(max_length=64)),
                        ("object_type", models.CharField(blank=True, default="", max_length=64)),
                        ("object_id", models.CharField(blank=True, default="", max_length=64)),
                        ("data", models.JSONField(default=dict)),
                        ("prev_hash", models.CharField(max_length=64)),
                        ("hash", models.CharField(max_length=64)),
                    ],
                    options={
                        "ordering": ["seq"],
                        "indexes": [
                            models.Index(
                                fields=["object_type", "object_id"], name="campaigns_audit_object"
                            )
                        ],
                        "db_table": "campaigns_auditevent",
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
