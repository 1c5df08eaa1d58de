"""Collections: overdue reminders and late fees."""
