"""Potluck jupyter_ext."""
