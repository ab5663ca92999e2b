"""Webhooks: an outbox written with each transition, signed deliveries with their own retries."""
