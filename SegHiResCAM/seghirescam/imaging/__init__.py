"""Images on disk and in space: geometry (IJK to RAS), reading and writing volumes, orientation, resampling."""
