"""Potluck hub_config."""
