"""Batches as objects: a row per batch (state, rules), counts kept by triggers on ``orders``.

rules.py   pure decisions: the state a caller sees, the halt rule, the ETA, preview totals
store.py   database: create, read (one indexed query), act (approve, cancel, resume, halt)
view.py    the batch object callers see (API, webhooks, CLI, console)
results.py the results file: JSON Lines by index, in pages (flat memory)
watch.py   what a transition or a sweep does about its batches (complete, halt, notify)
"""
