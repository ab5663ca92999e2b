"""A Zuora-shaped preview computed from the payload alone (upstream-api.md §5.2).

Every line costs ``UNIT_PRICE`` x quantity; the same payload always gives the same
preview. Amounts are mixed strings and numbers, as in Limio's published example.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson

__all__ = ["CREDIT_ORDER_TYPES", "CURRENCY", "UNIT_PRICE", "build_preview"]

UNIT_PRICE: Final = Decimal("9.99")
CURRENCY: Final = "GBP"
CREDIT_ORDER_TYPES: Final = frozenset({"cancel_subscription", "refund", "gift_refund"})
_CENT: Final = Decimal("0.01")


def _lines(payload: dict[str, Any]) -> list[tuple[str, Decimal]]:
    items = payload.get("orderItems")
    if not isinstance(items, list) or not items:
        offer = payload.get("offer")
        items = [{"offer": offer if isinstance(offer, dict) else {}, "quantity": 1}]
    lines = []
    for item in items:
        offer = item.get("offer") if isinstance(item, dict) else None
        offer = offer if isinstance(offer, dict) else {}
        name = offer.get("name") or f"Offer {str(offer.get('id', 'unknown'))[:8]}"
        quantity = item.get("quantity", 1) if isinstance(item, dict) else 1
        if isinstance(quantity, bool) or not isinstance(quantity, int | float):
            quantity = 1
        lines.append((str(name), Decimal(str(quantity))))
    return lines


def _target_date(payload: dict[str, Any]) -> str:
    for key in ("orderDate", "effectiveDate", "cancelDate"):
        value = payload.get(key)
        if isinstance(value, str) and len(value) >= 10:
            return value[:10]
    return datetime.now(UTC).date().isoformat()


def build_preview(payload: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"preview": ..., "schedule": [...]}`` for a validated order payload."""
    digest = hashlib.sha1(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
    date = _target_date(payload)
    items = []
    total = Decimal(0)
    for index, (name, quantity) in enumerate(_lines(payload)):
        amount = (UNIT_PRICE * quantity).quantize(_CENT)
        total += amount
        items.append(
            {
                "additionalInfo": {"quantity": float(quantity), "unitOfMeasure": "Each"},
                "amountWithoutTax": float(amount),
                "chargeDescription": "",
                "chargeName": f"{name} charge",
                "chargeNumber": f"C-{digest[:6].upper()}{index:02d}",
                "processingType": "Charge",
                "productName": name,
                "serviceStartDate": date,
                "subscriptionNumber": f"S-{digest[6:14].upper()}",
                "taxAmount": 0,
                "unitPrice": float(UNIT_PRICE),
            }
        )
    credit = payload.get("order_type") in CREDIT_ORDER_TYPES
    document = {
        "amount": float(total),
        "amountWithoutTax": float(total),
        "targetDate": date,
        "taxAmount": 0,
    }
    if credit:
        result = {"creditMemos": [{**document, "creditMemoItems": items}]}
    else:
        result = {"invoices": [{**document, "invoiceItems": items}]}
    due = Decimal(0) if credit else total
    preview = {
        "success": True,
        "orderNumber": f"O-{digest[:8].upper()}",
        "accountNumber": f"A-{digest[8:16].upper()}",
        "status": "active",
        "subscriptions": [{"status": "active", "subscriptionNumber": f"S-{digest[6:14].upper()}"}],
        "paidAmount": str(due),
        "previewResult": result,
    }
    schedule = {
        "date": date,
        "schedule_date": date,
        "type": "Schedule",
        "description": "Credit" if credit else "First payment",
        "amount": str(due),
        "taxAmount": 0,
        "amountWithoutTax": str(due),
        "currency": CURRENCY,
        "lineItems": [
            {k: item[k] for k in ("amountWithoutTax", "processingType", "taxAmount", "productName")}
            for item in items
        ],
    }
    return {"preview": preview, "schedule": [schedule]}
