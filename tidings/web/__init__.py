"""The HTTP edge and one module per transport, each thin over the hub."""
