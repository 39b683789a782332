"""The inference engine: detector, crops, batched Sapiens2 forwards and their decoding, with no sockets."""
