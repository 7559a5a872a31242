"""The delay before trying again after consecutive failures: exponential, capped, jittered.

Used by the etcd registry (keepalive, revoke, watch) and the discovery
client's watch. The delay doubles with each failure so that a long outage
costs little, and is drawn from the upper half of the step so that a fleet
that failed together does not come back together and stampede the server
the moment it recovers.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]

#: Doublings past this many failures change nothing below any sane cap, and an
#: unbounded exponent would overflow the float after ~1000 failures.
_MAX_DOUBLINGS = 16


def backoff_delay(failures: int, *, first: float, cap: float) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1 for the first).

    ``first`` doubled for each failure after the first, at most ``cap``, times
    a random factor between 0.5 and 1. Raises nothing.
    """
    step: float = first * 2.0 ** min(failures - 1, _MAX_DOUBLINGS)
    return min(step, cap) * random.uniform(0.5, 1.0)
