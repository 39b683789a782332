"""Where the pipeline meets the world: sources and live capture, sinks, previews, metrics."""
