"""The web console's built assets live in static/ (built from console/ by ``make console``)."""
