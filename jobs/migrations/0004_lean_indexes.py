"""Drop the job indexes no query uses; every status change had to update all ten.

Removed: the plain ``flow_id`` index (``job_flow_status_idx`` starts with it) and
the ``varchar_pattern_ops`` copies PostgreSQL gets for ``id``, ``flow_id`` and
``parent_id`` (for LIKE, which nothing here runs). ``parent_id`` keeps a plain index.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def drop_id_pattern_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'jobs_job' AND indexname LIKE 'jobs_job_id%%like'"
        )
        names = [row[0] for row in cursor.fetchall()]
    for name in names:
        schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"')


class Migration(migrations.Migration):

    dependencies = [
        ('flows', '0003_flow_legacy_id'),
        ('jobs', '0003_job_legacy_id'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='job',
            name='flow',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='jobs', to='flows.flow'),
        ),
        migrations.AlterField(
            model_name='job',
            name='parent',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='children', to='jobs.job'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(fields=['parent'], name='job_parent_idx'),
        ),
        migrations.RunPython(drop_id_pattern_index, migrations.RunPython.noop, elidable=True),
    ]
