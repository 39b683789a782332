"""The runtime every stage runs on: message envelope, ZeroMQ transport, frame ring, reorder buffers and
the stage loop. See docs/architecture.md."""
