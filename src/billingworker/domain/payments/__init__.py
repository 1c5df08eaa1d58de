"""Payments: recording payments, client credit, card captures."""
