"""Shared test ground: the real sshd, the test boxes, the fake provider servers, tiny models, images, helpers."""
