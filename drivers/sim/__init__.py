"""Device simulators: real devices on real sockets, for tests, the demo and the benchmarks.

Each simulator is registered by name in the ``lanewatch.simulators`` entry-point group and
run by ``lanewatch sim NAME``. The radiation portal lane is two modules:

- :mod:`lanewatch.drivers.sim.physics`: the physics of a lane (drifting background, shadow shielding,
  NORM, medical and threat sources, energy windows), seeded and pure numpy;
- :mod:`lanewatch.drivers.sim.lane`: the simulated RPM serving the Rapiscan-style line protocol over TCP
  or a pty (entry point ``lane``).
"""
