"""The runtime every stage runs on: message envelope, events and commands, ZeroMQ transport, the
topology table, frame ring, reorder buffers and the stage loop. See docs/architecture.md."""
