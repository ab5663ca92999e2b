"""The operator console: server-rendered pages under ``/console`` for operator keys."""
