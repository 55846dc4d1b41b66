"""Cancel keys (cancelkey.c): a connection id <-> the (pid, key) of its BackendKeyData, through
a keyed permutation, so that no table maps keys to clients."""

from __future__ import annotations

import random

import pytest

from pgfunnel._switch import Switch
from tests.switch.conftest import make_switch

SLOT_MAX = 2**30 - 1  # conn.c keeps slot + 1 at or below this


def _id(gen: int, slot1: int) -> int:
    return (gen << 32) | slot1


@pytest.fixture
def sw() -> Switch:
    return make_switch()


def test_keys_are_positive_int32s_distinct_and_invertible(sw: Switch) -> None:
    rng = random.Random(11)
    ids = {_id(rng.randrange(2**32), rng.randrange(1, SLOT_MAX + 1)) for _ in range(20000)}
    # The edges of the domain, and one slot through many generations (a slot's heirs).
    ids |= {_id(0, 1), _id(2**32 - 1, SLOT_MAX), _id(1, SLOT_MAX)}
    ids |= {_id(gen, 5) for gen in range(1, 500)}
    pairs = {}
    for conn in ids:
        pid, key = sw.cancel_key(conn)
        assert 0 <= pid < 2**31 and 0 <= key < 2**31
        assert (pid, key) not in pairs, (conn, pairs.get((pid, key)))
        pairs[(pid, key)] = conn
        assert sw.cancel_target(pid, key) == conn


def test_ids_outside_the_domain_get_no_key(sw: Switch) -> None:
    for conn in (0, _id(7, 0), _id(7, SLOT_MAX + 1), _id(2**32, 1), 2**64 - 1):
        with pytest.raises(ValueError, match="no cancel key"):
            sw.cancel_key(conn)


def test_pairs_never_given_out_name_no_id(sw: Switch) -> None:
    for pid, key in [
        (-1, 0),
        (0, -1),
        (2**31, 0),
        (0, 2**31),
        (2**40, 5),
        (-(2**40), 5),
        (2**64, 5),
        (5, -(2**70)),
    ]:
        assert sw.cancel_target(pid, key) == 0


def test_a_changed_bit_names_another_id(sw: Switch) -> None:
    conn = _id(3, 42)
    pid, key = sw.cancel_key(conn)
    for bit in range(31):
        assert sw.cancel_target(pid ^ (1 << bit), key) != conn
        assert sw.cancel_target(pid, key ^ (1 << bit)) != conn


def test_each_switch_has_its_own_secret() -> None:
    one, two = make_switch(), make_switch()
    conns = [_id(1, slot) for slot in range(1, 65)]
    assert [one.cancel_key(c) for c in conns] != [two.cancel_key(c) for c in conns]
    # Within a switch the mapping is fixed: a key works for as long as its client is there.
    assert [one.cancel_key(c) for c in conns] == [one.cancel_key(c) for c in conns]
