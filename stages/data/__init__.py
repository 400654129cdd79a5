"""The patch store and its readers: windows over scenes, splits, batch iterators."""
