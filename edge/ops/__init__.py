"""Operations: Prometheus metrics and health, systemd notification, status checks, unit installation."""
