"""Client accounts: password reset, phones, close/delete/merge/export, mass update, module commands."""
