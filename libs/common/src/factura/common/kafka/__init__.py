"""Kafka plumbing: the publisher, the one consumer loop, and topic administration."""
