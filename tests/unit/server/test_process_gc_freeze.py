"""Start-up objects are frozen out of the cyclic collector (short full collections), but
what is made afterwards must still be collected: a closed connection's transport and
protocol form a cycle, and its connection slot is freed only when that cycle is."""

from __future__ import annotations

import gc
import weakref

from sidecar.server.process import freeze_startup_objects


class _Node:
    pass


def test_objects_made_after_the_freeze_are_still_collected() -> None:
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        frozen_before = gc.get_freeze_count()

        a, b = _Node(), _Node()
        a.peer, b.peer = b, a  # a cycle, like transport <-> protocol
        freed: list[bool] = []
        weakref.finalize(a, freed.append, True)
        del a, b
        gc.collect()
        assert freed == [True]
        assert gc.get_freeze_count() == frozen_before  # nothing new was frozen
    finally:
        gc.unfreeze()
