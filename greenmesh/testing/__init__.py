"""Peers for tests and demos: a small upstream server (and, later, a control plane)."""
