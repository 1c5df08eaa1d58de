"""The outside world behind narrow interfaces (mail transport, ...), each with an in-memory twin."""
