"""Messaging: email templates, the outbox, delivery and the still-wanted check."""
