"""Every object belongs to a user: querysets that scope to what a user may see."""

from django.db import models


class OwnedQuerySet(models.QuerySet):
    """A queryset of a model whose `OWNER_FIELD` names its owner."""

    def for_user(self, user):
        """What `user` may see: their own objects, or everything for an admin."""
        if user.is_staff:
            return self
        return self.filter(**{self.model.OWNER_FIELD: user})
