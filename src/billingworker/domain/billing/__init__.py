"""Billing: due things, invoice plans and their storage, tax, prorata, manual invoices, item removal."""
