"""Potluck kernel."""
