"""What operators see: status, dead letters, metrics, health, structured logs."""
