"""The SKAB pump rig as one multivariate device (issue 16, third use case)."""
