"""The fleet-wide upstream call budget: permits, a learned limit, an outage breaker.

    window.py   what one process saw over a short window of calls (pure)
    limit.py    the learned concurrency limit: AIMD on drops and latency (pure)
    breaker.py  the outage breaker: closed, open (probes only), half-open ramp (pure)
    state.py    the shared state of the fleet and how a window moves it (pure)
    store.py    Redis I/O: permits (sorted set + Lua), shared state (compare-and-set), probes
    gate.py     one per process: batches permit requests, releases, reports windows

Every worker process on every host takes a permit from Redis before an upstream API call and
gives it back after; permits expire, so a dead process never keeps them.
"""
