"""Device drivers (one module per device family) and device simulators.

A driver reads one instrument, parses its protocol and publishes typed records
(:class:`lanewatch.edge.bus.records.Record`) on the ZeroMQ ingest bus. The service never imports a
driver; drivers are found by name through the ``lanewatch.drivers`` entry-point group.
"""
