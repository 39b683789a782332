"""Frames and pixels: the decoded-frame and result records, colour conversions, synthetic clips."""
