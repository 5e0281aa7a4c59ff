"""Benchmarks of the relay: added latency, capacity, and reference peers."""
