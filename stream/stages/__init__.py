"""The pipeline's stages (video decode, inference, track+smooth, render+write), each a socket loop."""
