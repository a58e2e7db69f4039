"""UserNames: uid -> name through pwd, bounded LRU (no root).

Ground truth: a fake passwd database counting its calls, and for the real
one, uid 0 (root on every Linux system) and this process's own uid.
"""

from __future__ import annotations

import os
import pwd

import pytest

from netatopd.users import USER_NAMES_MAX_ENTRIES, UserNames


class FakePasswd:
    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.calls: list[int] = []

    def __call__(self, uid: int) -> str:
        self.calls.append(uid)
        return self.names[uid]  # KeyError for an unknown uid, like pwd.getpwuid


def test_known_and_unknown_uids() -> None:
    passwd = FakePasswd({0: "root", 1000: "alice"})
    users = UserNames(lookup=passwd)
    assert users.name(1000) == "alice"
    assert users.name(0) == "root"
    assert users.name(4242) == "4242"
    assert (users.lookups, users.unknown) == (3, 1)


def test_answers_are_remembered_unknown_ones_too() -> None:
    passwd = FakePasswd({1000: "alice"})
    users = UserNames(lookup=passwd)
    for _ in range(5):
        assert users.name(1000) == "alice"
        assert users.name(4242) == "4242"
    assert passwd.calls == [1000, 4242]


def test_least_recently_used_goes_first() -> None:
    passwd = FakePasswd({1: "one", 2: "two", 3: "three"})
    users = UserNames(2, lookup=passwd)
    users.name(1)
    users.name(2)
    users.name(1)  # 1 is now the most recent
    users.name(3)  # evicts 2
    assert len(users) == 2
    users.name(1)
    assert passwd.calls == [1, 2, 3]
    users.name(2)
    assert passwd.calls == [1, 2, 3, 2]
    assert len(users) == 2


def test_clear_asks_again() -> None:
    passwd = FakePasswd({1000: "alice"})
    users = UserNames(lookup=passwd)
    users.name(1000)
    users.clear()
    passwd.names[1000] = "alice2"
    assert users.name(1000) == "alice2"
    assert len(passwd.calls) == 2


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        UserNames(0)
    assert UserNames().max_entries == USER_NAMES_MAX_ENTRIES


def test_real_passwd_database() -> None:
    users = UserNames()
    assert users.name(0) == "root"
    assert users.name(os.getuid()) == pwd.getpwuid(os.getuid()).pw_name
    unused = 3_999_999_999  # a valid uid_t no test host assigns
    with pytest.raises(KeyError):
        pwd.getpwuid(unused)
    assert users.name(unused) == str(unused)
    assert users.name(-1) == "-1"  # not a uid_t at all: still answers
