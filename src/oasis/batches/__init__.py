"""The Batch API: input files checked, lines run in the background, output files written."""
