"""The bus contract between drivers and the service: typed records, their ZeroMQ transport, the driver base."""
