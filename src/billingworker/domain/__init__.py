"""The billing rules: plain functions over a SQLAlchemy Session. No Dramatiq, no SMTP here."""
