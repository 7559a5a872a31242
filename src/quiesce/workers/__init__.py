"""``quiesce run TARGET --workers N``: a supervisor, N worker processes, one set of sockets.

The supervisor (:mod:`quiesce.workers.supervisor`) imports nothing of the
user's: a short-lived *describe* child loads the target as ``quiesce run``
would and says what to bind; the supervisor binds each HTTP socket once, and
every worker (:mod:`quiesce.workers.worker`) serves the App on those very
sockets, so that they share one accept queue. The supervisor owns the
signals, the registration and the one stop budget; a worker hears from it
over a control channel (:mod:`quiesce.workers.channel`):

::

    supervisor                                   worker
    ----------                                   ------
    hello {flags, cwd, ports, report}   ---->    loads the target, runs the App
                                        <----    ready {endpoints}    (app.ready is set)
    stop {budget, drain}                ---->    stop_timeout = budget; SIGTERM to itself
                                        <----    error {line, code}   (could not load it)

SIGHUP replaces the workers a few at a time, each new one ready before an
old one stops (:mod:`quiesce.workers.reload`). See ``docs/workers.md``.
"""

from __future__ import annotations

__all__: list[str] = []
