"""The ``lanewatch`` command line and the commands that are not part of the service itself."""
