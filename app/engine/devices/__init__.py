"""Devices and their ordered, signed action log."""
