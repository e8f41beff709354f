"""Peer-assisted CDN: objects scattered over many devices as encrypted, erasure-coded shares."""
