"""Fair shares of the dispatch slots between callers: weighted water-filling. Pure.

Each dispatch pass has ``free`` order slots to fill (what the broker may still carry). Every
caller with work waiting gets a share proportional to its weight; a caller that needs less
than its share takes what it needs and the rest is shared again among the others, so no slot
stays empty while someone has work. Over successive passes this is deficit round robin with
a quantum of one pass: a caller's backlog size never buys it more than its share.
"""

from __future__ import annotations

from collections.abc import Mapping


def shares(
    free: int, wanted: Mapping[str, int], weights: Mapping[str, int], *, rotate: int = 0
) -> dict[str, int]:
    """How many orders each caller may dispatch now, out of ``free`` slots.

    Args:
        free: slots to fill in this pass.
        wanted: each caller's orders ready to go (capped however the caller likes).
        weights: each caller's weight (missing: 1; at least 1).
        rotate: which caller gets the first of the slots left over by rounding; pass a
            counter that changes per pass so that rounding favours nobody over time.

    Returns:
        ``{caller: n}`` with ``n <= wanted[caller]`` and ``sum(n) <= free``; the sum is
        ``min(free, sum(wanted))``.
    """
    out = {c: 0 for c, n in wanted.items() if n > 0}
    left = max(free, 0)
    while left > 0:
        hungry = sorted(c for c in out if out[c] < wanted[c])
        if not hungry:
            break
        total_w = sum(max(weights.get(c, 1), 1) for c in hungry)
        given = 0
        for c in hungry:
            part = left * max(weights.get(c, 1), 1) // total_w
            take = min(part, wanted[c] - out[c])
            out[c] += take
            given += take
        if given == 0:
            # Fewer slots than hungry callers: one each, starting at a rotating position.
            start = rotate % len(hungry)
            for c in (hungry[start:] + hungry[:start])[:left]:
                out[c] += 1
                given += 1
        left -= given
    return {c: n for c, n in out.items() if n > 0}
