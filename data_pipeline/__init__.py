"""Input pipelines (grain / tensorflow-datasets) and the procedural captioned shapes dataset."""
