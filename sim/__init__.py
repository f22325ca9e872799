"""Deterministic discrete-event simulator driving the project's own protocol cores."""
