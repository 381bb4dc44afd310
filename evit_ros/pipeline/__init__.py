"""The frame pipeline: pre- and post-processing, buffer reuse and the `Segmenter`."""
