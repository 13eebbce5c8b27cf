"""Cache service, bundle store and their CLI commands."""
