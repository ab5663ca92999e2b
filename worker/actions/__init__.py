"""Operator and caller actions on existing orders, keys and webhooks: one module per action.

    actor         who acts: ``caller:<id>``, ``operator:<name>``, ``admin:<name>``, and whose
                  orders it may touch
    when          a requested time in UTC (naive is UTC), never before now
    moves         the pure decisions: cancel and retry moves, what "held" means
    store         loading an order in the actor's scope, applying retry moves
    cancel        cancel one order before it is submitted
    retry_one     schedule a retry of one failed order
    retry_filter  schedule (or dry-run) a retry of every order matching a filter
    resolve       an operator's decision on a held ``submit_unknown`` order
    resolve_moves its pure part: the look upstream and the moves it leads to
    lookup        the API process's read-only link to the upstream, for ``resolve``
    replay        make an endpoint's failed webhook deliveries pending again
    revoke        revoke an API key
    overview      what an operator sees first: every caller's counts (a read, no action)

The caller API (``worker.api.order_actions``), the operator API (``worker.api.operator``),
the console (``worker.console.forms``) and the CLI call these; each adapter only maps its
input and its errors. Errors come from ``worker.errors``: ``OrderNotFound`` (404),
``WrongState`` (409), ``InvalidInput`` (422, naming the field), ``UpstreamError`` (the
upstream could not be asked; its ``message`` says so), ``KeyAdminError`` (key refused).
"""
