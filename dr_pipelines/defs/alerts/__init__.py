"""Notifications: open-source Dagster sends none by itself."""
