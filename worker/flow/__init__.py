"""The fleet-wide upstream call budget: leases of permits, a controller, an outage breaker.

    window.py   what calls said: one process's window, the fleet's totals (pure)
    loss.py     the loss rule: CUBIC on concurrency after refusals and timeouts (pure)
    latency.py  the latency rule: a baseline that follows the upstream, cuts that are tested (pure)
    breaker.py  the outage breaker: closed, open (probes only), half-open ramp (pure)
    state.py    the shared state and the controller that moves it once per interval (pure)
    store.py    Redis I/O: leases (one sync script), totals, the controller's turn, the probe slot
    gate.py     one per process: permits from its lease by a counter, a syncer thread
    view.py     the budget as operators see it (/metrics, the CLI, the console)

Every worker process holds a lease of permits from Redis and hands them to its threads without a
round trip; leases expire, so a dead process never keeps them.
"""
