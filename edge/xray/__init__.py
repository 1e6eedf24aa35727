"""X-ray at the lane: scan assembly and imaging, registration on the vehicle's metres axis, fusion."""
