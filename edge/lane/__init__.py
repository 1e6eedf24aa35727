"""One inspection lane: its background, the occupancy state machine, and radiation detection per occupancy."""
