"""One module per channel: provider input to core.Inbound, core.Outbound to provider."""
