"""User names of uids, remembered (a bounded LRU cache over the passwd database).

Owns one ``UserNames`` cache: uid -> login name through ``pwd.getpwuid``
(NSS: /etc/passwd, LDAP, systemd-userdb ...), the number as text for a uid
no database knows.  Called by the task registry when it records a process's
identity, and by the CLI to name uids read from the table or the history.

A lookup can be slow (NSS may ask a directory server), so every answer is
kept, the unknown ones included, up to ``max_entries``; the least recently
used goes first.  ``clear()`` forgets them all (a user added since shows up).
"""

from __future__ import annotations

import pwd
from collections import OrderedDict
from collections.abc import Callable

# Distinct uids remembered; a host rarely runs processes of more users.
USER_NAMES_MAX_ENTRIES = 1024


def _passwd_name(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


class UserNames:
    """uid -> user name, cached.  ``lookup`` replaces pwd (tests); KeyError means unknown."""

    def __init__(
        self,
        max_entries: int = USER_NAMES_MAX_ENTRIES,
        *,
        lookup: Callable[[int], str] = _passwd_name,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._lookup = lookup
        self._names: OrderedDict[int, str] = OrderedDict()
        self.lookups = 0  # calls into the passwd database
        self.unknown = 0  # of those, uids it did not know

    def name(self, uid: int) -> str:
        """The login name of ``uid``, or ``str(uid)`` when no database knows it."""
        names = self._names
        found = names.get(uid)
        if found is not None:
            names.move_to_end(uid)
            return found
        self.lookups += 1
        try:
            found = self._lookup(uid)
        except (KeyError, OverflowError, ValueError):  # unknown, or not a valid uid_t
            self.unknown += 1
            found = str(uid)
        names[uid] = found
        if len(names) > self.max_entries:
            names.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._names)

    def clear(self) -> None:
        """Forget every answer."""
        self._names.clear()
