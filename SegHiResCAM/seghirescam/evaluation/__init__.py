"""Faithfulness evaluation of the CAM methods: perturbation curves, localisation, sanity checks, reports."""
