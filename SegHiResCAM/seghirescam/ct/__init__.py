"""A CT in, heatmaps out: the pipeline on the CT's own grid, cases from files, the output writer, figures."""
