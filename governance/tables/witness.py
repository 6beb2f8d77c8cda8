"""Witnesses of the audit log and the cosignatures they return (C2SP tlog-witness)."""
