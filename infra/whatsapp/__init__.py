"""WhatsApp: the neonize gateway and its device store, the link check, the simulator."""
