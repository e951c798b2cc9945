"""Writing planned legacy flows: bulk inserts, all of a flow or none of it, legacy timestamps kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connection, models, transaction

from flows.legacy.plan import FlowPlan
from flows.models import Flow
from jobs.models import Job

# Most rows per INSERT statement where COPY is not available (SQLite's parameter limit
# usually allows fewer: connection.ops.bulk_batch_size decides).
BULK_BATCH_SIZE = 1000
# Column types whose Python values (str, int, bool, aware datetime, None) psycopg
# adapts by itself: COPY passes them without the field's get_db_prep_save().
PLAIN_TYPES = frozenset({
    "CharField", "TextField", "IntegerField", "PositiveIntegerField", "BigIntegerField",
    "BooleanField", "DateTimeField", "ForeignKey", "BigAutoField", "AutoField",
})


def write_flows(*, plans: list[FlowPlan]) -> list[tuple[FlowPlan, DatabaseError]]:
    """Insert these flows and all their jobs; return the ones that failed, with the error.

    Every plan was fully checked while planning, so the batch goes in as one
    transaction of a few bulk INSERTs (one commit per flow would cost more than
    the flow itself). If the database refuses it anyway, each flow is retried
    in a transaction of its own: a flow is always written whole or not at all,
    and one bad flow never keeps the others out.
    """
    try:
        with transaction.atomic():
            _insert(plans)
        return []
    except DatabaseError as exc:
        if len(plans) == 1:
            return [(plans[0], exc)]
    failures = []
    for plan in plans:
        try:
            with transaction.atomic():
                _insert([plan])
        except DatabaseError as exc:
            failures.append((plan, exc))
    return failures


def _insert(plans: list[FlowPlan]) -> None:
    insert_as_is(Flow, [plan.flow for plan in plans])
    insert_as_is(Job, [job for plan in plans for job in plan.jobs])


def insert_as_is(model: type[models.Model], objs: list[models.Model]) -> None:
    """``bulk_create``, except that every value is written exactly as the object holds it.

    ``created_at`` is ``auto_now_add`` and ``Flow.updated_at`` is ``auto_now``:
    ``bulk_create`` would replace the legacy timestamps with the current time.
    Both paths here skip the fields' ``pre_save()``, as ``loaddata`` does for
    fixtures, so no second UPDATE is needed. The tests check the timestamps.
    """
    if not objs:
        return
    fields = [field for field in model._meta.concrete_fields if not field.generated]
    if connection.vendor == "postgresql":
        _copy(model, fields, objs)
    else:
        _raw_insert(model, fields, objs)


def _raw_insert(model: type[models.Model], fields: list[models.Field], objs: list[models.Model]) -> None:
    # The insert Model.save_base(raw=True) makes for loaddata, in bulk.
    size = min(connection.ops.bulk_batch_size(fields, objs) or BULK_BATCH_SIZE, BULK_BATCH_SIZE)
    for start in range(0, len(objs), size):
        model._base_manager._insert(objs[start : start + size], fields=fields, raw=True, using=connection.alias)


def _copy(model: type[models.Model], fields: list[models.Field], objs: list[models.Model]) -> None:
    """PostgreSQL's COPY: several times faster than a multi-row INSERT built by the ORM.

    Most of an ORM insert's time goes into preparing and quoting every value in
    Python; here values of plain column types go to psycopg as they are, and
    only the others (JSON) are prepared by their field.
    """
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    prepare = [_preparer(field) for field in fields]
    sql = f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN"
    # wrap_database_errors: psycopg's errors become Django's (IntegrityError...), as for the ORM.
    with connection.cursor() as cursor, connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
        for obj in objs:
            copy.write_row([
                value if how is None else how(value)
                for how, value in zip(prepare, [getattr(obj, field.attname) for field in fields], strict=True)
            ])


def _preparer(field: models.Field) -> Callable[[Any], Any] | None:
    """How COPY gets the field's value: as it is (None), as JSON text, or as the field prepares it."""
    kind = field.get_internal_type()
    if kind in PLAIN_TYPES:
        return None
    if kind == "JSONField":
        # What JSONField.get_db_prep_save produces, without three layers of wrappers (half of
        # the COPY's time). COPY reads text into jsonb; None is SQL NULL, as for a null=True field.
        return lambda value: None if value is None else json.dumps(value, cls=field.encoder)
    return lambda value: field.get_db_prep_save(value, connection)
