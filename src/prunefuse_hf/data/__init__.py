"""The data side: loading pools and evaluation splits, decoding images, the image processor and pixel cache,
the `DataPool` (who is labeled, in which round) and the checks of settings against the data and model."""
