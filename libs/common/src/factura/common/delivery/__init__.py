"""Delivery: channel policy, the one sender loop, suppression, texts."""
