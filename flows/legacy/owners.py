"""Who owns a migrated flow: legacy users matched by email, or created, or ``--owner``."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.functions import Lower

from flows.legacy.errors import LegacyMigrationError
from flows.legacy.report import MigrationReport
from flows.legacy.source import LegacyFlow, LegacySource, LegacyUser
from flows.legacy.values import legacy_id_text


@dataclass
class OwnerResolver:
    """Maps legacy user ids to Flowsite user ids, resolving each legacy user once.

    A legacy user with an email is matched to the Flowsite user with that email
    (case-insensitive), or created inactive with an unusable password (not in a
    dry run). Flows of any other legacy user, or of none, go to ``fallback``.
    Only the users who own flows being migrated are looked at.
    """

    source: LegacySource
    report: MigrationReport
    dry_run: bool
    fallback: Any = None
    owners: dict[str, int | None] = field(default_factory=dict)
    # Legacy user ids already looked up that own nothing usable (gone, or without email).
    unusable: set[str] = field(default_factory=set)

    def resolve(self, *, flows: Iterable[LegacyFlow]) -> None:
        """Resolve the owners of these flows that are not resolved yet (a few queries)."""
        known = self.owners.keys() | self.unusable
        wanted = {legacy_id_text(flow.user_id): flow.user_id for flow in flows if flow.user_id is not None}
        wanted = {key: user_id for key, user_id in wanted.items() if key not in known}
        if not wanted:
            return
        users = [user for user in self.source.users(list(wanted.values())) if user.email and user.email.strip()]
        self.unusable.update(set(wanted) - {legacy_id_text(user.id) for user in users})
        matches = _match_by_email(users)
        for user in users:
            email = user.email.strip().lower()
            if email in matches:
                self.owners[legacy_id_text(user.id)] = matches[email]
                self.report.users_matched += 1
            else:
                self.owners[legacy_id_text(user.id)] = self._create(user)
                matches[email] = self.owners[legacy_id_text(user.id)]
                self.report.users_created += 1

    def owner_id(self, flow: LegacyFlow) -> int | None:
        """The Flowsite user id that owns ``flow`` (None in a dry run, for a user not created)."""
        key = None if flow.user_id is None else legacy_id_text(flow.user_id)
        if key in self.owners:
            return self.owners[key]
        return self.fallback.pk if self.fallback is not None else None

    def _create(self, user: LegacyUser) -> int | None:
        if self.dry_run:
            return None
        model = get_user_model()
        created = model(
            username=_free_username(user),
            email=user.email.strip(),
            first_name=(user.name or "")[:150],
            is_active=False,
        )
        created.set_unusable_password()
        created.save()
        return created.pk


def _match_by_email(users: list[LegacyUser]) -> dict[str, int]:
    """Return lower-cased email -> Flowsite user id (the oldest account, if several share it)."""
    emails = {user.email.strip().lower() for user in users}
    found: dict[str, int] = {}
    rows = (
        get_user_model()
        .objects.annotate(email_lower=Lower("email"))
        .filter(email_lower__in=emails)
        .order_by("pk")
        .values_list("email_lower", "pk")
    )
    for email, pk in rows:
        found.setdefault(email, pk)
    return found


def _free_username(user: LegacyUser) -> str:
    """The email as username when free (and short enough), else ``legacy-user-<id>``."""
    model = get_user_model()
    email = user.email.strip()
    candidates = [email] if len(email) <= 150 else []
    candidates.append(f"legacy-user-{legacy_id_text(user.id)}"[:150])
    for candidate in candidates:
        if not model.objects.filter(username=candidate).exists():
            return candidate
    return f"legacy-user-{legacy_id_text(user.id)}-{uuid.uuid4().hex[:8]}"[-150:]


def find_owner(username: str | None) -> Any:
    """Return the ``--owner`` user, or None; raise ``LegacyMigrationError`` if there is no such user."""
    if username is None:
        return None
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise LegacyMigrationError(f"User {username!r} does not exist.")
    return user


def ownerless_message(flow_ids: list[str]) -> str:
    """The error for flows that need ``--owner`` when none was given."""
    examples = ", ".join(flow_ids[:5]) + (", ..." if len(flow_ids) > 5 else "")
    return (
        f"{len(flow_ids)} legacy flow(s) have no owner that can be migrated (no userId, their user "
        f"is gone, or has no email): {examples}. Give --owner USERNAME to assign them to an "
        "existing Flowsite user."
    )
