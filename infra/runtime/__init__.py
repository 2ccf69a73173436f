"""The loops of a running process: the gateway worker, projection supervisors, the message
sender, view rebuilds, timers, how processes start, log and stop, the ASGI entry point."""
