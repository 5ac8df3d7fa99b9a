"""LiveKit rooms, participant tokens and join links, the LiveKit webhook."""
