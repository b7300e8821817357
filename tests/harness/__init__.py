"""Helpers for Gatehouse end-to-end tests: processes, Envoy, MCP peers, the gateway stack."""
