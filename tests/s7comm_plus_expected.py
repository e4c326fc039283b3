"""S7comm-plus commands expected per real capture, derived by hand, not by running the sensor.

Keys are capture paths relative to ``/work/shared/pcaps/real``; values are the
``(client_ip, server_ip, "s7comm-plus", command)`` facts a replay must produce (client = initiator,
server = the side on TCP 102).  These are the only real captures with protocol id 0x72 in a COTP DT.

How they were derived: tshark 4.0 has no S7comm-plus dissector, so the COTP payloads were listed
with ``tshark -r FILE -Y 'cotp.type == 0x0f && data.data[0:1] == 72' -T fields -e ip.src
-e ip.dst -e tcp.srcport -e data.data`` and read at the offsets of packet-s7comm_plus.c: header
``72 VV LLLL``; for V3 (VV=03) a digest length byte (always 0x20 here) and a 32-byte digest;
then the opcode (``31`` Request, ``32`` Response, ``02`` Response2, ``33`` Notification), 2
reserved bytes and, except for a Notification, the function code (``data_functioncode_names``).
Both directions of a connection add to the same set.  Rows whose opcode byte is not an opcode
are continuation fragments (raw data of a PDU started in the previous fragment): no name.
"""

V13_SYNC = "iti/s7_V13_1200_TP1200sim_MW100_Int_SPS_5s_MW102_Int_SPS_10s_MW102_ab_1000_Timer_sync"

S7COMM_PLUS_EXPECTED = {
    # V3 (integrity digest first) between an HMI/PC and a 1500.  Client requests: 31/04f2 (26x),
    # 31/0542, 31/054c; PLC responses 32/0542, 32/054c and 79 Notifications (33).  The SetVariable
    # requests have no response in the capture.  The other flow in this file (192.168.0.33) is
    # classic S7comm (0x32) only, and 192.168.0.3:49155 carries just TCP keep-alives.
    "icsnpp-s7comm/s7comm_plus.pcap": {
        ("192.168.0.3", "192.168.0.1", "s7comm-plus", "SetVariable"),
        ("192.168.0.3", "192.168.0.1", "s7comm-plus", "SetMultiVariables"),
        ("192.168.0.3", "192.168.0.1", "s7comm-plus", "GetMultiVariables"),
        ("192.168.0.3", "192.168.0.1", "s7comm-plus", "Notification"),
    },
    # TIA V12 uploading OB1 from a 1200: V1 CreateObject (04ca) to open the session, then V2
    # requests and responses for 04bb, 04ca, 04d4, 0524, 0542, 054c, 0556, 0560, 0586.  One V2
    # CreateObject request is fragmented over three DTs: the first fragment carries 31/04ca, the
    # next two start with 00 82 3f 98 and be 52 27 7b (continuation data, no name).
    "iti/s7_S7-1200-Uploading-OB1-TIAV12.pcap": {
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "CreateObject"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "Explore"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "DeleteObject"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "GetLink"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "SetMultiVariables"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "GetMultiVariables"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "BeginSequence"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "EndSequence"),
        ("192.168.1.10", "192.168.1.191", "s7comm-plus", "GetVarSubStreamed"),
    },
    # OPC server reading a 1511: V1 04ca, then V2 0542, 054c, 0586 (requests and responses).
    "iti/s7_S7-1511-opc-request-all-types.pcap": {
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "CreateObject"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "SetMultiVariables"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "GetMultiVariables"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "GetVarSubStreamed"),
    },
    # HMI on a 1511: V1 04ca, V2 0542, 054c and the closing 04d4.
    "iti/s7_S7-1511_db2_var1_HMI.pcap": {
        ("192.168.25.147", "192.168.25.139", "s7comm-plus", "CreateObject"),
        ("192.168.25.147", "192.168.25.139", "s7comm-plus", "DeleteObject"),
        ("192.168.25.147", "192.168.25.139", "s7comm-plus", "SetMultiVariables"),
        ("192.168.25.147", "192.168.25.139", "s7comm-plus", "GetMultiVariables"),
    },
    # Six connections from the same HMI: V1 04ca; V2 0542, 054c, 0586; two connections show only
    # the client's 31/04d4 (the capture starts late); one only a 31/054c.
    "iti/s7_S7-1511_db3_var1_HMI.pcap": {
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "CreateObject"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "DeleteObject"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "SetMultiVariables"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "GetMultiVariables"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "GetVarSubStreamed"),
    },
    # V1 04ca, V2 0542, 0586, 04d4.
    "iti/s7_S7-1511_db6w0_HMI.pcap": {
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "CreateObject"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "DeleteObject"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "SetMultiVariables"),
        ("192.168.25.146", "192.168.25.139", "s7comm-plus", "GetVarSubStreamed"),
    },
    # TP1200 simulator and a 1200, two connections: V1 04ca; V2 04ca, 04d4, 04f2, 0542, 054c;
    # the PLC answers SetVariable with opcode 02 (Response2) and pushes Notifications (33).
    f"{V13_SYNC}.pcapng": {
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "CreateObject"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "DeleteObject"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "SetVariable"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "SetMultiVariables"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "GetMultiVariables"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "Notification"),
    },
    # The same setup, second recording: the same opcodes and function codes.
    f"{V13_SYNC}_FehlerbeiMW100.pcapng": {
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "CreateObject"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "DeleteObject"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "SetVariable"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "SetMultiVariables"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "GetMultiVariables"),
        ("192.168.1.35", "192.168.1.191", "s7comm-plus", "Notification"),
    },
    # HMI on a 1200: V1 04ca, V2 0542, 054c.
    "iti/s7_s7-1200-hmi.pcap": {
        ("192.168.25.177", "192.168.25.131", "s7comm-plus", "CreateObject"),
        ("192.168.25.177", "192.168.25.131", "s7comm-plus", "SetMultiVariables"),
        ("192.168.25.177", "192.168.25.131", "s7comm-plus", "GetMultiVariables"),
    },
}
