"""`dataplane send`: any packet a user crafts, sent from a pod and followed hop by hop to
an outcome. Its packets told apart from all others (follow), the outcome judged from
their hops (outcome: delivered, answered, dropped, lost), the command's run and its
text and JSON (sending).

May import: dataplane.errors, dataplane.names, dataplane.records and every earlier stage
(cluster, bpf, traffic, verify, report).
"""
