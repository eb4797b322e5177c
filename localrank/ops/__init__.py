"""Operating the daemon on a user's machine: the launchd / systemd service, doctor, sd_notify."""
