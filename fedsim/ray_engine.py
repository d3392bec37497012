"""Two repairs to Flower's Ray simulation engine (`backend=ray`), for faults in a client's process.

- `replace_dead_actors()`: when a client actor's process dies mid-round (killed, out of memory,
  a crash in native code), Flower reports the client's job as failed but puts the dead actor back
  into its pool, so every later job handed to it fails too. Patched, a fresh actor takes the dead
  one's place: that round's client gets an `error` row, later rounds run as before.
- `EngineExitGuard`: Flower's engine waits for every client job it started before it returns, so a
  client stuck past its round's timeout holds a finished run up for as long as it stays stuck.
  `STRAGGLER_GRACE` seconds after the ServerApp has returned (every row is written by then), the
  guard kills (`ray.kill`) the client actors still running a job, and the engine returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref

__all__ = ["STRAGGLER_GRACE", "EngineExitGuard", "replace_dead_actors"]

log = logging.getLogger("fedsim")

STRAGGLER_GRACE = 3.0  # seconds a finished Ray run waits for clients still running
_ENDING = threading.Event()  # set while the guard stops the actors: no replacements then
_POOLS: weakref.WeakSet = weakref.WeakSet()  # Flower's actor pools in this process


def replace_dead_actors() -> None:
    """Patch Flower's actor pool (once) so that an actor whose process died is replaced."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool
    from ray.exceptions import ActorDiedError

    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool
    if getattr(fetch, "_fedsim_replaces_dead_actors", False):
        return

    def fetch_replacing_dead(self, future):
        try:
            return fetch(self, future)
        except ActorDiedError:
            if _ENDING.is_set():
                raise
            # Flower's RayBackend then hands `_future_to_actor[future]` back to the pool.
            self._future_to_actor[future] = self.create_actor_fn()
            log.warning("a client's Ray worker died; a new one takes its place")
            raise

    fetch_replacing_dead._fedsim_replaces_dead_actors = True
    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_replacing_dead


def _track_pools() -> None:
    """Patch Flower's actor pool (once) so that this module can find the actors still busy."""
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    init = BasicActorPool.__init__
    if getattr(init, "_fedsim_tracks_pools", False):
        return

    def tracked_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        _POOLS.add(self)

    tracked_init._fedsim_tracks_pools = True
    BasicActorPool.__init__ = tracked_init


def _busy_actors() -> list:
    """The client actors of this process's pools that are running a job now."""
    busy = []
    for pool in list(_POOLS):
        for _ in range(3):  # a worker thread may change the mapping while it is copied
            with contextlib.suppress(RuntimeError):
                busy += list(pool._future_to_actor.values())
                break
    return busy


class EngineExitGuard:
    """Ends a Ray run within `grace` seconds of its ServerApp returning (see the module docstring).

    Usage: `with EngineExitGuard() as guard: run_simulation(server_app=guard.wrap(app), ...)`.
    """

    def __init__(self, grace: float = STRAGGLER_GRACE) -> None:
        self.grace = grace
        self._engine_done = threading.Event()

    def __enter__(self) -> EngineExitGuard:
        _track_pools()
        self._engine_done.clear()
        _ENDING.clear()
        return self

    def __exit__(self, *exc) -> None:
        self._engine_done.set()
        _ENDING.clear()

    def wrap(self, server_app):
        """A ServerApp that runs `server_app`, then starts the countdown."""
        from flwr.serverapp import ServerApp

        app = ServerApp()

        @app.main()
        def main(grid, context) -> None:
            try:
                server_app(grid, context)
            finally:
                threading.Thread(target=self._countdown, daemon=True).start()

        return app

    def _countdown(self) -> None:
        if self._engine_done.wait(self.grace):
            return
        busy = _busy_actors()
        if self._engine_done.is_set() or not busy:
            return
        log.warning(
            "the run is finished, but Flower's engine still waits %g s later for %d client(s)"
            " stuck past their round's timeout; stopping them", self.grace, len(busy),
        )  # fmt: skip
        logging.getLogger("flwr").setLevel(logging.CRITICAL)  # the stopped clients' noise
        _ENDING.set()
        import ray

        for actor in busy:
            with contextlib.suppress(Exception):  # already gone, or Ray shutting down
                ray.kill(actor, no_restart=True)
