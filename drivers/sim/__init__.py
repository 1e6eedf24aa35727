"""Device simulators: real devices on real sockets, for tests, the demo and the detection benchmark.

- :mod:`drivers.sim.physics`: the physics of a radiation portal lane (background, shadow shielding,
  NORM, medical and threat sources, energy windows), seeded and pure numpy.
- :mod:`drivers.sim.lane`: a simulated RPM serving the Rapiscan-style line protocol over TCP or a
  pty, registered as ``lane`` in the ``lanewatch.simulators`` entry-point group.
"""
