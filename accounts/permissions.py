"""Who may see and act on flows and jobs: the one rule, for the API, the live endpoints and services.

- Everybody sees and acts on their own flows and jobs (a flow's jobs belong to the flow's owner).
- Another user's flows (jobs) are visible to superusers, and to staff with the Django model
  permission ``flows.view_flow`` (``jobs.view_job``) or ``change_*``, as the admin
  decides who may view a model. Anyone else gets ``404`` for them: they do not exist.
- Acting on another user's flow or job needs the matching model permission as well:
  ``change`` (cancel, retry, report a job's state, attach a job) or ``delete``. A refusal
  of something the user can see is ``403`` with a message (``NotPermitted``).
- Every action on another user's flow or job is written to the ``flowsite.audit`` log:
  who, what, which object, whose; refusals too.

The permissions are the admin's own (``auth.Permission``, given to users or groups in the
admin), so the API and the admin console agree on what a staff member may do.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from django.contrib.auth import get_permission_codename
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet

audit = logging.getLogger("flowsite.audit")


class Action(StrEnum):
    """Django's model permission actions, as ``get_permission_codename`` names them."""

    VIEW = "view"
    CHANGE = "change"
    DELETE = "delete"


class NotPermitted(PermissionDenied):
    """The user sees the object but may not do this to it (``403``)."""


def _perm(model: type[Model], action: Action) -> str:
    return f"{model._meta.app_label}.{get_permission_codename(action, model._meta)}"


def _has(user: AbstractBaseUser, model: type[Model], action: Action) -> bool:
    """Superusers may do everything; staff what their model permissions allow; others nothing."""
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    return user.is_staff and user.has_perm(_perm(model, action))


def sees_all(user: AbstractBaseUser, model: type[Model]) -> bool:
    """Whether ``user`` sees every user's rows of ``model`` (view, or change, as in the admin)."""
    return _has(user, model, Action.VIEW) or _has(user, model, Action.CHANGE)


def visible(queryset: QuerySet, user: AbstractBaseUser) -> QuerySet:
    """The rows of ``queryset`` that ``user`` may see: their own, or all of them (``sees_all``)."""
    return queryset if sees_all(user, queryset.model) else queryset.filter(owner_id=user.pk)


def may_change_all(user: AbstractBaseUser, model: type[Model]) -> bool:
    """Whether ``user`` may change what belongs to nobody, such as a queue (``jobs.QueueState``):
    superusers, and staff with the model's ``change`` permission."""
    return _has(user, model, Action.CHANGE)


def may(user: AbstractBaseUser, obj: Model, action: Action, *, model: type[Model] | None = None) -> bool:
    """Whether ``user`` may do ``action`` to ``obj`` (a flow or job), judged by ``model``'s permission."""
    if obj.owner_id == user.pk:
        return True
    model = model or type(obj)
    return sees_all(user, model) and (action == Action.VIEW or _has(user, model, action))


def authorize(user: AbstractBaseUser, obj: Model, action: Action, *, what: str, model: type[Model] | None = None) -> None:
    """Raise ``NotPermitted`` unless ``user`` may do ``action`` to ``obj``; audit it if ``obj`` is another user's.

    ``what`` names the action for people and the log (e.g. ``"cancel"``). The caller has
    already found ``obj`` among the rows the user may see (``visible``): this decides the act.
    """
    if obj.owner_id == user.pk:
        return
    allowed = may(user, obj, action, model=model)
    _audit(user, obj, what=what, allowed=allowed)
    if not allowed:
        model = model or type(obj)
        raise NotPermitted(
            f"You may not {what} another user's {type(obj)._meta.verbose_name}: "
            f"it needs the permission {_perm(model, action)}."
        )


def _audit(user: AbstractBaseUser, obj: Any, *, what: str, allowed: bool) -> None:
    owner = getattr(obj, "owner", None)
    audit.log(
        logging.INFO if allowed else logging.WARNING,
        "%s: %s (id %s) %s %s %s of %s (id %s)",
        "allowed" if allowed else "refused", user.get_username(), user.pk, what,
        type(obj)._meta.model_name, obj.pk, owner.get_username() if owner is not None else "nobody", obj.owner_id,
    )
