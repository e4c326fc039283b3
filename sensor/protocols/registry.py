"""The analyzers the sensor runs, in probing order, and the ports known to be servers.

Owns the list; a new protocol module is added here and nowhere else.
"""

from . import ads_discovery, ams, http, modbus, s7comm

# ads_discovery before AMS/UDP: both on UDP 48899, the first to claim a flow wins
ANALYZERS = (
    modbus.ANALYZER, s7comm.ANALYZER, ams.ANALYZER, ads_discovery.ANALYZER, ams.UDP_ANALYZER, http.ANALYZER,
)  # fmt: skip

# Ports on which the responder of a flow whose handshake was not seen is assumed to listen:
# the analyzers' own ports and the common IT/OT services (IANA registry).
WELL_KNOWN_SERVER_PORTS = frozenset({
    20, 21, 22, 23, 25, 53, 67, 69, 80, 88, 110, 123, 135, 137, 138, 139, 143, 161, 162, 389, 443, 445,
    514, 636, 993, 995, 1433, 1521, 1883, 1911, 2222, 2404, 3128, 3306, 3389, 4840, 5432, 5900, 8000,
    8080, 8443, 8883, 9600, 18245, 20000, 34962, 34963, 34964, 44818, 47808,
})  # fmt: skip
SERVER_PORTS = WELL_KNOWN_SERVER_PORTS | frozenset(
    port for analyzer in ANALYZERS for port in analyzer.tcp_ports | analyzer.udp_ports
)
